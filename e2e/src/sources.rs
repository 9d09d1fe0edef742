//! Source-address ranges for client connections. One source address has
//! about 28,000 ephemeral ports (Linux's default 32768–60999), so a load
//! generator that holds more connections than that spreads them over several
//! loopback addresses, every one of which is local on Linux.

use std::net::Ipv4Addr;
use std::str::FromStr;

use anyhow::{Context, bail, ensure};

/// The most addresses one list may hold: far more than any benchmark here
/// needs, few enough that a typo such as `127.0.0.1-127.255.0.0` is refused
/// instead of allocated.
pub const MAX_SOURCES: usize = 65_536;

/// An ordered list of IPv4 source addresses, used round-robin.
///
/// Parsed from a comma-separated list of addresses and inclusive ranges:
/// `127.0.0.2-127.0.0.40`, `127.0.0.2,127.0.0.9-127.0.1.20`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceAddrs {
    addrs: Vec<Ipv4Addr>,
}

impl SourceAddrs {
    /// The address for the `i`-th connection, round-robin.
    pub fn pick(&self, i: usize) -> Ipv4Addr {
        self.addrs[i % self.addrs.len()]
    }

    /// How many addresses the list holds (never 0).
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Always false: a parsed list holds at least one address.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
}

impl FromStr for SourceAddrs {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        let mut addrs = Vec::new();
        for part in text.split(',').map(str::trim) {
            ensure!(!part.is_empty(), "empty entry in source list {text:?}");
            let (first, last) = match part.split_once('-') {
                Some((first, last)) => (parse_addr(first)?, parse_addr(last)?),
                None => (parse_addr(part)?, parse_addr(part)?),
            };
            let (first, last) = (u32::from(first), u32::from(last));
            if first > last {
                bail!("source range {part:?} ends before it starts");
            }
            let count = usize::try_from(last - first)
                .ok()
                .and_then(|n| n.checked_add(1))
                .filter(|n| addrs.len() + n <= MAX_SOURCES);
            if count.is_none() {
                bail!("source list {text:?} holds more than {MAX_SOURCES} addresses");
            }
            addrs.extend((first..=last).map(Ipv4Addr::from));
        }
        Ok(Self { addrs })
    }
}

fn parse_addr(text: &str) -> anyhow::Result<Ipv4Addr> {
    text.trim()
        .parse()
        .with_context(|| format!("{text:?} is not an IPv4 address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<Ipv4Addr> {
        let sources: SourceAddrs = text.parse().unwrap();
        (0..sources.len()).map(|i| sources.pick(i)).collect()
    }

    #[test]
    fn a_range_is_inclusive_at_both_ends() {
        let addrs = parse("127.0.0.2-127.0.0.40");
        assert_eq!(addrs.len(), 39);
        assert_eq!(addrs[0], Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(addrs[38], Ipv4Addr::new(127, 0, 0, 40));
    }

    #[test]
    fn a_range_may_cross_an_octet() {
        let addrs = parse("127.0.0.254-127.0.1.1");
        assert_eq!(
            addrs,
            [
                Ipv4Addr::new(127, 0, 0, 254),
                Ipv4Addr::new(127, 0, 0, 255),
                Ipv4Addr::new(127, 0, 1, 0),
                Ipv4Addr::new(127, 0, 1, 1),
            ]
        );
    }

    #[test]
    fn lists_mix_single_addresses_and_ranges() {
        let addrs = parse("127.0.0.1, 127.0.0.5-127.0.0.6");
        assert_eq!(
            addrs,
            [
                Ipv4Addr::new(127, 0, 0, 1),
                Ipv4Addr::new(127, 0, 0, 5),
                Ipv4Addr::new(127, 0, 0, 6),
            ]
        );
    }

    #[test]
    fn addresses_are_used_round_robin() {
        let sources: SourceAddrs = "127.0.0.2-127.0.0.4".parse().unwrap();
        let picked: Vec<_> = (0..7).map(|i| sources.pick(i).octets()[3]).collect();
        assert_eq!(picked, [2, 3, 4, 2, 3, 4, 2]);
    }

    #[test]
    fn malformed_lists_are_refused() {
        for bad in [
            "",
            "127.0.0.40-127.0.0.2",
            "127.0.0",
            "localhost",
            "127.0.0.1,,127.0.0.2",
            "127.0.0.1-",
            "::1",
            "127.0.0.0-127.255.255.255",
        ] {
            assert!(bad.parse::<SourceAddrs>().is_err(), "{bad:?} parsed");
        }
    }
}

//! What a run prints: human lines, or one JSON object for scripts with all
//! the same numbers, and the tallies and histograms both are built from.

use std::collections::BTreeMap;
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// The result of one subcommand.
#[derive(Debug)]
pub struct Report {
    /// Lines for a person, in reading order.
    pub lines: Vec<String>,
    /// Every number of the run, for scripts (`--json`).
    pub json: Value,
    /// What went wrong, when the run itself is a check that failed (a probe
    /// that found no echo); the binary exits non-zero after printing.
    pub problem: Option<String>,
}

impl Report {
    /// Prints the report: human lines on stdout; with `json`, the human lines
    /// on stderr and the JSON object alone on stdout, so that a script can
    /// parse stdout and still log what a person reads.
    pub fn print(&self, json: bool) {
        for line in &self.lines {
            if json {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        }
        if json {
            println!("{}", self.json);
        }
    }
}

/// Counts of events by reason (connect failures, close codes, errors),
/// shared by every connection's task.
#[derive(Debug, Default)]
pub struct Tally {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    /// Counts one more `reason`.
    pub fn add(&self, reason: impl Into<String>) {
        *self.lock().entry(reason.into()).or_default() += 1;
    }

    /// The counts so far, by reason.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.lock().clone()
    }

    /// All events so far.
    pub fn total(&self) -> u64 {
        self.lock().values().sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        // A poisoned tally still holds good counts: a panicking task never
        // leaves one half-updated.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `counts` as `reason: n, reason: n`, or `none`.
pub fn describe_counts(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts
        .iter()
        .map(|(reason, n)| format!("{reason}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A histogram of nanoseconds for round trips: 1 ns to 100 s, 3 significant
/// digits.
pub fn nanos_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("static histogram bounds are valid")
}

/// Percentiles of a histogram of nanoseconds, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Percentiles {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl Percentiles {
    /// Reads the percentiles of `nanos`.
    pub fn of(nanos: &Histogram<u64>) -> Self {
        let us = |v: u64| v as f64 / 1000.0;
        Self {
            count: nanos.len(),
            p50_us: us(nanos.value_at_quantile(0.50)),
            p99_us: us(nanos.value_at_quantile(0.99)),
            p999_us: us(nanos.value_at_quantile(0.999)),
            max_us: us(nanos.max()),
            mean_us: nanos.mean() / 1000.0,
        }
    }

    /// `p50 … max` for a human line.
    pub fn human(&self) -> String {
        format!(
            "p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs (mean {:.1} µs, {} samples)",
            self.p50_us, self.p99_us, self.p999_us, self.max_us, self.mean_us, self.count
        )
    }

    /// The same numbers as a JSON object.
    pub fn json(&self) -> Value {
        json!({
            "count": self.count,
            "p50_us": round1(self.p50_us),
            "p99_us": round1(self.p99_us),
            "p999_us": round1(self.p999_us),
            "max_us": round1(self.max_us),
            "mean_us": round1(self.mean_us),
        })
    }
}

/// How a close is counted: its code (`1001`), or `no code` for a close frame
/// without one.
pub fn close_code(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(frame) => u16::from(frame.code).to_string(),
        None => "no code".to_owned(),
    }
}

/// `value` to one decimal, for JSON a person may also read.
pub fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_reported_in_microseconds() {
        let mut h = nanos_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50_us - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_us - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max_us - 1000.0).abs() < 1.0, "{p:?}");
        assert_eq!(p.json()["count"], 1000);
    }

    #[test]
    fn a_tally_counts_by_reason() {
        let tally = Tally::default();
        tally.add("1001");
        tally.add("1001");
        tally.add("1006");
        assert_eq!(tally.total(), 3);
        assert_eq!(describe_counts(&tally.counts()), "1001: 2, 1006: 1");
        assert_eq!(describe_counts(&BTreeMap::new()), "none");
    }
}

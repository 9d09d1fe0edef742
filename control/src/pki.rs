//! The certificate authority of a gateway's control channel.
//!
//! Every gateway has its own CA ([`Ca`]); the operator keeps its certificate
//! and key in a Kubernetes Secret and reloads it with [`Ca::from_pem`]. The CA
//! issues two kinds of leaf certificates ([`Usage`]):
//!
//! - every data-plane pod holds a **server** certificate for [`SERVER_NAME`],
//!   which it presents on its control port;
//! - the operator (and the e2e tests, and `ringway-ctl`) hold a **client**
//!   certificate, which the pods require before they accept a call.
//!
//! All keys are ECDSA P-256. Certificates carry whole-second validity; every
//! certificate starts to be valid five minutes before it is issued, so that
//! pods whose clocks lag a little accept it at once.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::certificate::X509Certificate;
use x509_parser::time::ASN1Time;

/// The DNS name every pod's control certificate carries and every client
/// verifies. Pods are dialed by IP, which is not known when their
/// certificates are issued, so the name is the same for all of them: the CA
/// (one per gateway) is what tells pods of one gateway from the rest.
pub const SERVER_NAME: &str = "ringway-control";

/// How far back every certificate's validity starts, for clock skew.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// The latest instant an X.509 time can express: 9999-12-31T23:59:59Z.
const MAX_X509_SECS: u64 = 253_402_300_799;

/// What went wrong while generating, loading, issuing or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The random key pair could not be generated.
    #[error("cannot generate an ECDSA P-256 key pair: {0}")]
    KeyGeneration(#[source] rcgen::Error),
    /// A certificate could not be built or signed.
    #[error("cannot sign the certificate for {common_name:?}: {source}")]
    Signing {
        /// Common name of the certificate being signed.
        common_name: String,
        /// What rcgen reported.
        #[source]
        source: rcgen::Error,
    },
    /// A common name or subject alternative name is empty or not ASCII.
    #[error("invalid name {name:?} for a certificate: {reason}")]
    InvalidName {
        /// The offending name.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// The requested validity is zero, shorter than a second or beyond the
    /// year 9999.
    #[error("invalid validity: {0}")]
    InvalidValidity(String),
    /// The CA can no longer issue: its own certificate has expired.
    #[error("the CA certificate expired at {expired_at}; generate a new CA")]
    CaExpired {
        /// Expiry of the CA certificate (RFC 3339, UTC).
        expired_at: String,
    },
    /// The stored CA private key is not a PEM PKCS#8 key rcgen can sign with.
    #[error("the stored CA private key is not usable (expected a PEM PKCS#8 ECDSA key): {0}")]
    InvalidCaKey(#[source] rcgen::Error),
    /// The stored CA certificate parses but is not a CA certificate.
    #[error("the stored CA certificate is not usable: {0}")]
    InvalidCaCertificate(String),
    /// The stored CA private key does not belong to the stored CA certificate.
    #[error("the stored CA private key does not belong to the stored CA certificate")]
    KeyMismatch,
    /// A PEM certificate could not be decoded or parsed.
    #[error("cannot parse the certificate: {0}")]
    InvalidCertificate(String),
}

/// What a leaf certificate may be used for: its extended key usage.
///
/// A certificate is issued for exactly one usage. A pod's server certificate
/// carries `serverAuth` only, so a pod (or whoever steals a pod's key) can
/// never authenticate as a client and push snapshots to the other pods of its
/// gateway; the client certificate carries `clientAuth` only, so it cannot
/// impersonate a pod either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// `serverAuth`: the certificate a data-plane pod presents on its control
    /// port. Issue it for [`SERVER_NAME`].
    Server,
    /// `clientAuth`: the certificate the operator presents to the pods.
    Client,
}

/// A certificate and its private key, issued by a [`Ca`].
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate's private key, PEM PKCS#8.
    pub key_pem: String,
    /// The end of the certificate's validity (whole seconds).
    pub not_after: SystemTime,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("not_after", &format_utc(unix_secs(self.not_after)))
            .finish_non_exhaustive()
    }
}

/// The certificate authority of one gateway's control channel.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
    /// Expiry of the CA certificate, seconds since the Unix epoch.
    not_after: i64,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("not_after", &format_utc(self.not_after))
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Generates a new self-signed CA valid from now for `valid_for`
    /// (rounded down to whole seconds). It can sign leaf certificates only
    /// (path length 0).
    pub fn generate(common_name: &str, valid_for: Duration) -> Result<Ca, PkiError> {
        let (not_before, not_after) = validity(SystemTime::now(), valid_for, None)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(common_name)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, not_before, not_after);
        let key = new_key()?;
        let cert = params
            .self_signed(&key)
            .map_err(|source| PkiError::Signing {
                common_name: common_name.to_owned(),
                source,
            })?;
        let key_pem = key.serialize_pem();
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem,
            not_after: not_after as i64,
            issuer: Issuer::new(params, key),
        })
    }

    /// Reloads a CA from the PEM certificate and PEM PKCS#8 key that
    /// [`Ca::cert_pem`] and [`Ca::key_pem`] returned. Checks that the
    /// certificate is a CA certificate and that the key is its key; an
    /// expired CA loads (so its expiry can be read) but refuses to issue.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let der = decode_pem(cert_pem)?;
        let cert = parse_cert(&der)?;
        if !is_ca(&cert)? {
            return Err(PkiError::InvalidCaCertificate(
                "it is not a CA certificate (basicConstraints cA is not set)".to_owned(),
            ));
        }
        let key = KeyPair::from_pem(key_pem).map_err(PkiError::InvalidCaKey)?;
        if !key_matches(&cert, &key) {
            return Err(PkiError::KeyMismatch);
        }
        let not_after = cert.validity().not_after.timestamp();
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| PkiError::InvalidCaCertificate(e.to_string()))?;
        Ok(Ca {
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            not_after,
        })
    }

    /// The CA certificate, PEM: what both ends of the channel trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM PKCS#8. Keep it in a Secret; only the
    /// operator needs it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a leaf certificate with a new ECDSA P-256 key.
    ///
    /// `usage` sets the extended key usage to `serverAuth` only or
    /// `clientAuth` only (see [`Usage`]): a pod's server certificate can never
    /// authenticate as a client and push snapshots to other pods.
    /// `dns_names` become the subject alternative names (an entry that parses
    /// as an IP address becomes an IP SAN); pods' certificates carry
    /// [`SERVER_NAME`]. The validity starts now and lasts `valid_for`,
    /// clamped to the CA's own expiry; [`Issued::not_after`] is the effective
    /// end.
    pub fn issue(
        &self,
        common_name: &str,
        usage: Usage,
        dns_names: &[&str],
        valid_for: Duration,
    ) -> Result<Issued, PkiError> {
        let now = SystemTime::now();
        if unix_secs(now) >= self.not_after {
            return Err(PkiError::CaExpired {
                expired_at: format_utc(self.not_after),
            });
        }
        let (not_before, not_after) = validity(now, valid_for, Some(self.not_after))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(common_name)?;
        params.subject_alt_names = dns_names
            .iter()
            .map(|name| san(name))
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, not_before, not_after);
        let key = new_key()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Signing {
                common_name: common_name.to_owned(),
                source,
            })?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: UNIX_EPOCH + Duration::from_secs(not_after),
        })
    }
}

/// The end of a PEM certificate's validity (its first certificate, if the
/// PEM holds a chain), so the operator can renew it in time.
pub fn not_after(cert_pem: &str) -> Result<SystemTime, PkiError> {
    let der = decode_pem(cert_pem)?;
    let cert = parse_cert(&der)?;
    Ok(from_unix_secs(cert.validity().not_after.timestamp()))
}

/// Whether a PEM certificate expires within `margin` of `now` (or already
/// has), i.e. whether it should be replaced.
pub fn needs_renewal(cert_pem: &str, now: SystemTime, margin: Duration) -> Result<bool, PkiError> {
    let expiry = not_after(cert_pem)?;
    Ok(match now.checked_add(margin) {
        Some(deadline) => expiry <= deadline,
        // A margin past the end of time: everything needs renewal.
        None => true,
    })
}

fn new_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(PkiError::KeyGeneration)
}

fn decode_pem(cert_pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| PkiError::InvalidCertificate(format!("not a PEM certificate: {e}")))
}

fn subject(common_name: &str) -> Result<DistinguishedName, PkiError> {
    if common_name.trim().is_empty() {
        return Err(PkiError::InvalidName {
            name: common_name.to_owned(),
            reason: "the common name is empty".to_owned(),
        });
    }
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    Ok(name)
}

fn san(name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = |reason: &str| PkiError::InvalidName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() {
        return Err(invalid("a DNS name cannot be empty"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "a DNS name cannot contain spaces or control characters",
        ));
    }
    Ia5String::try_from(name)
        .map(SanType::DnsName)
        .map_err(|_| invalid("a DNS name must be ASCII"))
}

/// `(not_before, not_after)` in whole seconds since the Unix epoch for a
/// certificate issued at `now`, with its end clamped to `cap`.
fn validity(
    now: SystemTime,
    valid_for: Duration,
    cap: Option<i64>,
) -> Result<(u64, u64), PkiError> {
    if valid_for < Duration::from_secs(1) {
        return Err(PkiError::InvalidValidity(format!(
            "a certificate must be valid for at least a second, not {valid_for:?}"
        )));
    }
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| PkiError::InvalidValidity("the clock is before 1970".to_owned()))?
        .as_secs();
    let not_before = now.saturating_sub(BACKDATE.as_secs());
    let mut not_after = now
        .checked_add(valid_for.as_secs())
        .filter(|&t| t <= MAX_X509_SECS)
        .ok_or_else(|| {
            PkiError::InvalidValidity(format!(
                "{valid_for:?} from now is past the end of X.509 time (9999-12-31)"
            ))
        })?;
    if let Some(cap) = cap {
        not_after = not_after.min(u64::try_from(cap).unwrap_or(0));
    }
    Ok((not_before, not_after))
}

fn set_validity(params: &mut CertificateParams, not_before: u64, not_after: u64) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(not_before);
    params.not_after = epoch + Duration::from_secs(not_after);
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn from_unix_secs(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// RFC 3339 UTC rendering of seconds since the Unix epoch.
fn format_utc(secs: i64) -> String {
    match ASN1Time::from_timestamp(secs) {
        Ok(time) => {
            let t = time.to_datetime();
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        }
        // Beyond what a calendar date can express; never the case for a
        // certificate's validity.
        Err(_) => format!("{secs} s since 1970-01-01T00:00:00Z"),
    }
}

/// Parses a DER certificate (trailing bytes are ignored, as PEM decoding
/// yields exactly one certificate).
fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| PkiError::InvalidCertificate(format!("not a valid X.509 certificate: {e}")))
}

/// Whether the certificate's basicConstraints has cA set.
fn is_ca(cert: &X509Certificate<'_>) -> Result<bool, PkiError> {
    cert.basic_constraints()
        .map(|bc| bc.is_some_and(|bc| bc.value.ca))
        .map_err(|e| PkiError::InvalidCaCertificate(format!("bad basicConstraints: {e}")))
}

/// Whether `key` is the key pair of the certificate's subject public key.
fn key_matches(cert: &X509Certificate<'_>, key: &KeyPair) -> bool {
    let spk = &cert.public_key().subject_public_key;
    spk.unused_bits == 0 && *spk.data == *key.public_key_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// DER of the OIDs id-kp-serverAuth and id-kp-clientAuth.
    const SERVER_AUTH: &[u8] = &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
    const CLIENT_AUTH: &[u8] = &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

    #[test]
    fn issue_and_reload_round_trip() {
        let ca = Ca::generate("ringway test ca", 30 * DAY).unwrap();
        let reloaded = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(reloaded.cert_pem(), ca.cert_pem());
        assert_eq!(reloaded.key_pem(), ca.key_pem());
        assert_eq!(reloaded.not_after, ca.not_after);

        let server = reloaded
            .issue("pod-0", Usage::Server, &[SERVER_NAME], DAY)
            .unwrap();
        let der = decode_pem(&server.cert_pem).unwrap();
        assert!(contains(&der, SERVER_AUTH));
        assert!(!contains(&der, CLIENT_AUTH));
        assert!(contains(&der, SERVER_NAME.as_bytes()));
        let cert = parse_cert(&der).unwrap();
        assert!(!is_ca(&cert).unwrap());
        let key = KeyPair::from_pem(&server.key_pem).unwrap();
        assert!(key_matches(&cert, &key));
        assert!(!key_matches(
            &cert,
            &KeyPair::from_pem(ca.key_pem()).unwrap()
        ));

        let client = ca.issue("operator", Usage::Client, &[], DAY).unwrap();
        let der = decode_pem(&client.cert_pem).unwrap();
        assert!(contains(&der, CLIENT_AUTH));
        assert!(!contains(&der, SERVER_AUTH));

        // A leaf cannot be loaded as the CA, nor the CA with a foreign key.
        assert!(matches!(
            Ca::from_pem(&server.cert_pem, &server.key_pem),
            Err(PkiError::InvalidCaCertificate(_))
        ));
        assert!(matches!(
            Ca::from_pem(ca.cert_pem(), &server.key_pem),
            Err(PkiError::KeyMismatch)
        ));
        assert!(matches!(
            Ca::from_pem("garbage", ca.key_pem()),
            Err(PkiError::InvalidCertificate(_))
        ));
        assert!(matches!(
            Ca::from_pem(ca.cert_pem(), "garbage"),
            Err(PkiError::InvalidCaKey(_))
        ));
    }

    #[test]
    fn not_after_is_correct_within_a_second() {
        let ca = Ca::generate("ringway test ca", 365 * DAY).unwrap();
        let before = SystemTime::now();
        let issued = ca
            .issue("pod-0", Usage::Server, &[SERVER_NAME], DAY)
            .unwrap();
        let parsed = not_after(&issued.cert_pem).unwrap();
        assert_eq!(parsed, issued.not_after);
        let expected = before + DAY;
        let diff = match parsed.duration_since(expected) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        assert!(diff <= Duration::from_secs(1), "off by {diff:?}");

        let ca_expiry = not_after(ca.cert_pem()).unwrap();
        assert!(ca_expiry > before + 364 * DAY && ca_expiry <= before + 366 * DAY);
    }

    #[test]
    fn leaf_validity_is_clamped_to_the_ca() {
        let ca = Ca::generate("short ca", Duration::from_secs(3600)).unwrap();
        let issued = ca
            .issue("pod-0", Usage::Server, &[SERVER_NAME], DAY)
            .unwrap();
        assert_eq!(issued.not_after, not_after(ca.cert_pem()).unwrap());
    }

    #[test]
    fn needs_renewal_true_and_false() {
        let ca = Ca::generate("ringway test ca", 30 * DAY).unwrap();
        let issued = ca.issue("operator", Usage::Client, &[], 10 * DAY).unwrap();
        let now = SystemTime::now();
        assert!(!needs_renewal(&issued.cert_pem, now, DAY).unwrap());
        assert!(needs_renewal(&issued.cert_pem, now, 11 * DAY).unwrap());
        assert!(needs_renewal(&issued.cert_pem, now + 10 * DAY, Duration::ZERO).unwrap());
        assert!(needs_renewal(&issued.cert_pem, now, Duration::MAX).unwrap());
        assert!(needs_renewal("not a certificate", now, DAY).is_err());
    }

    #[test]
    fn invalid_inputs_are_refused() {
        let ca = Ca::generate("ringway test ca", DAY).unwrap();
        assert!(matches!(
            ca.issue("pod", Usage::Server, &["bad name"], DAY),
            Err(PkiError::InvalidName { .. })
        ));
        assert!(matches!(
            ca.issue("", Usage::Server, &[SERVER_NAME], DAY),
            Err(PkiError::InvalidName { .. })
        ));
        assert!(matches!(
            ca.issue("pod", Usage::Server, &[SERVER_NAME], Duration::ZERO),
            Err(PkiError::InvalidValidity(_))
        ));
        assert!(matches!(
            Ca::generate("ca", Duration::MAX),
            Err(PkiError::InvalidValidity(_))
        ));
        // IP addresses become IP SANs.
        ca.issue("pod", Usage::Server, &["10.0.0.7", SERVER_NAME], DAY)
            .unwrap();
    }

    #[test]
    fn times_format() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(MAX_X509_SECS as i64), "9999-12-31T23:59:59Z");
        assert_eq!(format_utc(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(format_utc(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn generalized_time_expiry_round_trips() {
        // An expiry after 2049 is encoded as a GeneralizedTime.
        let now = unix_secs(SystemTime::now()).unsigned_abs();
        let valid_for = Duration::from_secs(MAX_X509_SECS - now - 60);
        let ca = Ca::generate("long ca", valid_for).unwrap();
        assert!(ca.not_after > MAX_X509_SECS as i64 - 120);
        assert_eq!(
            not_after(ca.cert_pem()).unwrap(),
            from_unix_secs(ca.not_after)
        );
        let reloaded = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(reloaded.not_after, ca.not_after);
        assert!(format_utc(ca.not_after).starts_with("9999-12-31T23:5"));
    }
}

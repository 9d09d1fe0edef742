//! Comparing a secret (a peer token, a drain token) with what a request
//! offers, in time that does not tell where they first differ.

/// Whether `offered` is `ours`, in time independent of where the first
/// difference is (the length is not secret).
pub(crate) fn same(ours: &[u8], offered: &[u8]) -> bool {
    ours.len() == offered.len()
        && ours
            .iter()
            .zip(offered)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

//! Proving knowledge of the computation's secret over TCP.
//!
//! The coordinator opens every TCP connection with `CHALLENGE nonce=HEX`
//! (32 random bytes); the peer answers `AUTH proof=HEX`, the HMAC-SHA256
//! of the nonce keyed with the secret; the coordinator answers `OK` or
//! `ERROR` and closes. The secret itself never crosses the network, and a
//! recorded proof is worthless for the next nonce.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Sent first by the coordinator on a TCP connection.
pub const CHALLENGE: &str = "CHALLENGE";
/// The peer's answer to a challenge.
pub const AUTH: &str = "AUTH";

fn mac(secret: &[u8], nonce: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    m.update(nonce);
    m
}

/// The proof for `nonce`, as lower-case hex.
pub fn prove(secret: &[u8], nonce: &[u8]) -> String {
    to_hex(&mac(secret, nonce).finalize().into_bytes())
}

/// Whether `proof` (hex) is right for `nonce`; compares in constant time.
pub fn verify(secret: &[u8], nonce: &[u8], proof: &str) -> bool {
    match from_hex(proof) {
        Some(bytes) => mac(secret, nonce).verify_slice(&bytes).is_ok(),
        None => false,
    }
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs() {
        let nonce = [7u8; 32];
        let p = prove(b"secret", &nonce);
        assert_eq!(p.len(), 64);
        assert!(verify(b"secret", &nonce, &p));
        assert!(!verify(b"other", &nonce, &p));
        assert!(!verify(b"secret", &[8u8; 32], &p));
        assert!(!verify(b"secret", &nonce, "zz"));
        assert_eq!(from_hex(&to_hex(&[0, 255, 16])), Some(vec![0, 255, 16]));
    }
}

//! Mutual proof of the computation's secret over TCP.
//!
//! ```text
//! coordinator → peer   CHALLENGE nonce=Nc               (32 random bytes)
//! peer → coordinator   AUTH nonce=Nk proof=P1           (32 random bytes of its own)
//! coordinator → peer   OK proof=P2    or    ERROR reason=... (and closes)
//!
//! P1 = HMAC-SHA256(secret, "stasis-auth-2 client"      || Nc || Nk)
//! P2 = HMAC-SHA256(secret, "stasis-auth-2 coordinator" || Nc || Nk)
//! ```
//!
//! Each side proves the secret for a nonce the other drew, so neither a
//! recorded proof nor one obtained from a third connection passes. The two
//! labels differ, so a peer's own proof sent back to it (reflection) is no
//! proof of the other role; with both nonces 32 bytes exactly, the labels'
//! different lengths also keep the two messages apart. The coordinator
//! computes P2 only after P1 checked out, so it is no oracle for strangers.
//! The secret itself never crosses the network.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Sent first by the coordinator on a TCP connection.
pub const CHALLENGE: &str = "CHALLENGE";
/// The peer's answer to a challenge.
pub const AUTH: &str = "AUTH";

/// Bytes in each side's nonce.
pub const NONCE_LEN: usize = 32;

/// A nonce as it travels (hex on the wire).
pub type Nonce = [u8; NONCE_LEN];

/// Who proves: the two roles sign different messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The peer that connected (an agent, a client, restart).
    Client,
    /// The coordinator.
    Coordinator,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Client => b"stasis-auth-2 client",
            Role::Coordinator => b"stasis-auth-2 coordinator",
        }
    }
}

fn mac(secret: &[u8], role: Role, challenge: &Nonce, answer: &Nonce) -> Hmac<Sha256> {
    // HMAC accepts keys of any length.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    m.update(role.label());
    m.update(challenge);
    m.update(answer);
    m
}

/// `role`'s proof for the coordinator's nonce `challenge` and the peer's
/// nonce `answer`, as lower-case hex.
pub fn prove(secret: &[u8], role: Role, challenge: &Nonce, answer: &Nonce) -> String {
    to_hex(&mac(secret, role, challenge, answer).finalize().into_bytes())
}

/// Whether `proof` (hex) is `role`'s proof for the two nonces; compares in
/// constant time.
pub fn verify(secret: &[u8], role: Role, challenge: &Nonce, answer: &Nonce, proof: &str) -> bool {
    match from_hex(proof) {
        Some(bytes) => mac(secret, role, challenge, answer).verify_slice(&bytes).is_ok(),
        None => false,
    }
}

/// A nonce from its hex form; `None` unless exactly [`NONCE_LEN`] bytes.
pub fn nonce_from_hex(s: &str) -> Option<Nonce> {
    from_hex(s)?.try_into().ok()
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

    const NC: Nonce = [7u8; 32];
    const NK: Nonce = [9u8; 32];

    #[test]
    fn proofs() {
        let p = prove(b"secret", Role::Client, &NC, &NK);
        assert_eq!(p.len(), 64);
        assert!(verify(b"secret", Role::Client, &NC, &NK, &p));
        assert!(!verify(b"other", Role::Client, &NC, &NK, &p));
        assert!(!verify(b"secret", Role::Client, &[8u8; 32], &NK, &p));
        assert!(!verify(b"secret", Role::Client, &NC, &[8u8; 32], &p));
        assert!(!verify(b"secret", Role::Client, &NC, &NK, "zz"));
        assert!(!verify(b"secret", Role::Client, &NC, &NK, ""));
        assert!(!verify(b"secret", Role::Client, &NC, &NK, &p[..62]));
        assert_eq!(from_hex(&to_hex(&[0, 255, 16])), Some(vec![0, 255, 16]));
    }

    #[test]
    fn the_roles_prove_different_things() {
        let client = prove(b"secret", Role::Client, &NC, &NK);
        let coord = prove(b"secret", Role::Coordinator, &NC, &NK);
        assert_ne!(client, coord);
        // A client's proof sent back to it proves nothing of a coordinator,
        // nor a coordinator's proof anything of a client.
        assert!(!verify(b"secret", Role::Coordinator, &NC, &NK, &client));
        assert!(!verify(b"secret", Role::Client, &NC, &NK, &coord));
    }

    #[test]
    fn swapped_nonces_are_another_proof() {
        // A peer that echoes the challenge as its own nonce, or swaps the
        // two, cannot reuse a proof made for the other order.
        let p = prove(b"secret", Role::Client, &NC, &NK);
        assert!(!verify(b"secret", Role::Client, &NK, &NC, &p));
        assert_ne!(prove(b"secret", Role::Client, &NC, &NC), prove(b"secret", Role::Coordinator, &NC, &NC));
    }

    #[test]
    fn nonces_have_one_length() {
        assert_eq!(nonce_from_hex(&to_hex(&NC)), Some(NC));
        assert_eq!(nonce_from_hex(&to_hex(&[1u8; 31])), None);
        assert_eq!(nonce_from_hex(&to_hex(&[1u8; 33])), None);
        assert_eq!(nonce_from_hex("xy"), None);
    }
}

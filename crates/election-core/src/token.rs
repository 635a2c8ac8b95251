//! Reporting-client tokens as text: their form and the hash that is stored.
//!
//! A token is 32 random bytes shown once, as `et_<64 hex digits>`, when it is
//! issued; only its SHA-256 is stored, so a copy of the database does not let
//! anyone report. Whoever issues tokens (ingest's `token issue`, the
//! benchmark, tests) and whoever checks them (ingest) share these two
//! functions, so they live here rather than in one of those binaries. The
//! randomness is the caller's: this crate draws none.

use sha2::{Digest, Sha256};

/// The prefix of every token, so a leaked one is recognisable in a scan.
pub const TOKEN_PREFIX: &str = "et_";

/// The token whose secret is `bytes` (which must be random), as shown to
/// the operator once.
///
/// ```
/// let token = election_core::token::from_bytes([0xab; 32]);
/// assert_eq!(token.len(), 3 + 64);
/// assert!(token.starts_with("et_abab"));
/// ```
pub fn from_bytes(bytes: [u8; 32]) -> String {
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// The stored form of a token: its SHA-256.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

//! API keys: what a caller presents to act for an account.
//!
//! A key reads `sk_test_<id>_<secret>` or `sk_live_<id>_<secret>`: the mode
//! is visible at a glance, the 16-hex-digit id finds the stored record, and
//! the 64-hex-digit secret (256 random bits) is stored only as its SHA-256
//! hash and compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const ID_HEX: usize = 16;
const SECRET_HEX: usize = 64;

/// A key as presented by a caller, parsed but not yet checked.
#[derive(Clone, PartialEq, Eq)]
pub struct PresentedKey {
    pub id: String,
    pub live_mode: bool,
    secret: String,
}

impl std::fmt::Debug for PresentedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresentedKey")
            .field("id", &self.id)
            .field("live_mode", &self.live_mode)
            .finish()
    }
}

impl PresentedKey {
    /// A new random key; returns its full text (to show once) and the parts.
    pub fn generate(live_mode: bool) -> (String, PresentedKey) {
        let id = format!("{:016x}", rand::random::<u64>());
        let secret: String = rand::random::<[u8; 32]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = PresentedKey {
            id,
            live_mode,
            secret,
        };
        (key.text(), key)
    }

    /// Parses the text of a key; `None` when it does not have the shape of
    /// one.
    pub fn parse(text: &str) -> Option<PresentedKey> {
        let (live_mode, rest) = match text.get(..8)? {
            "sk_live_" => (true, &text[8..]),
            "sk_test_" => (false, &text[8..]),
            _ => return None,
        };
        let (id, secret) = rest.split_once('_')?;
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(id, ID_HEX) || !hex(secret, SECRET_HEX) {
            return None;
        }
        Some(PresentedKey {
            id: id.to_owned(),
            live_mode,
            secret: secret.to_owned(),
        })
    }

    /// The SHA-256 of the secret part, as stored.
    pub fn secret_hash(&self) -> Vec<u8> {
        Sha256::digest(self.secret.as_bytes()).to_vec()
    }

    /// Whether the secret hashes to `stored`, compared in constant time.
    pub fn matches(&self, stored: &[u8]) -> bool {
        self.secret_hash().ct_eq(stored).into()
    }

    fn text(&self) -> String {
        let mode = if self.live_mode { "live" } else { "test" };
        format!("sk_{mode}_{}_{}", self.id, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_parses_back_and_matches_its_hash() {
        let (text, key) = PresentedKey::generate(true);
        assert!(text.starts_with("sk_live_"));
        let parsed = PresentedKey::parse(&text).unwrap();
        assert_eq!(parsed, key);
        assert!(parsed.matches(&key.secret_hash()));
        let (_, other) = PresentedKey::generate(true);
        assert!(!parsed.matches(&other.secret_hash()));
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        let (text, _) = PresentedKey::generate(false);
        for bad in [
            "",
            "sk_test_",
            "pk_test_abc",
            &text[..text.len() - 1],
            &format!("{text}0"),
            &text.replace("sk_test", "sk_prod"),
        ] {
            assert_eq!(PresentedKey::parse(bad), None, "{bad}");
        }
        assert_eq!(PresentedKey::parse("sk_test_ééééééééééééééé"), None);
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let (text, key) = PresentedKey::generate(false);
        let secret = &text[text.rfind('_').unwrap() + 1..];
        assert!(!format!("{key:?}").contains(secret));
    }
}

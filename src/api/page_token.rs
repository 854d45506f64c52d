//! Page tokens of ListCustomers: opaque to clients, signed by the server.
//!
//! A token holds the position of the last customer served (create_time and
//! id) and a digest of the filters and owner it was issued for, followed by
//! an HMAC-SHA256 tag (truncated to 128 bits) under the server's key. A token
//! that was altered, truncated, forged, or presented with other filters or
//! by another account fails verification.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::domain::{AccountScope, Cursor, CustomerId, ListFilter};

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const DIGEST_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// version, filter digest, create_time in microseconds.
const HEADER_LEN: usize = 1 + DIGEST_LEN + 8;

/// Signs and verifies page tokens.
#[derive(Clone)]
pub struct PageTokens {
    key: Vec<u8>,
}

impl std::fmt::Debug for PageTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokens { key: <redacted> }")
    }
}

impl PageTokens {
    /// Tokens signed with `key`. Every replica must share it, and tokens
    /// stay valid only as long as it does.
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    /// A token for the page after `cursor`.
    pub fn issue(&self, scope: &AccountScope, filter: &ListFilter, cursor: &Cursor) -> String {
        let micros = (cursor.create_time.unix_timestamp_nanos() / 1000) as i64;
        let mut payload = Vec::with_capacity(HEADER_LEN + cursor.id.as_str().len() + TAG_LEN);
        payload.push(VERSION);
        payload.extend_from_slice(&filter_digest(scope, filter));
        payload.extend_from_slice(&micros.to_be_bytes());
        payload.extend_from_slice(cursor.id.as_str().as_bytes());
        let tag = self.tag(&payload);
        payload.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(payload)
    }

    /// The position a token encodes, if it is authentic and was issued for
    /// exactly these filters and this owner.
    pub fn verify(&self, scope: &AccountScope, filter: &ListFilter, token: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        if bytes.len() <= HEADER_LEN + TAG_LEN || bytes[0] != VERSION {
            return None;
        }
        let (payload, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let mut mac = self.mac();
        mac.update(payload);
        mac.verify_truncated_left(tag).ok()?;
        if payload[1..1 + DIGEST_LEN] != filter_digest(scope, filter) {
            return None;
        }
        let micros = i64::from_be_bytes(payload[1 + DIGEST_LEN..HEADER_LEN].try_into().ok()?);
        let create_time =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).ok()?;
        let id = String::from_utf8(payload[HEADER_LEN..].to_vec()).ok()?;
        Some(Cursor {
            create_time,
            id: CustomerId::from_trusted(id),
        })
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length")
    }

    fn tag(&self, payload: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac();
        mac.update(payload);
        let full = mac.finalize().into_bytes();
        full[..TAG_LEN]
            .try_into()
            .expect("SHA-256 tags are 32 bytes")
    }
}

/// A digest of everything a token is bound to. Each part is length-prefixed
/// so that no two different filters encode alike.
fn filter_digest(scope: &AccountScope, filter: &ListFilter) -> [u8; DIGEST_LEN] {
    fn part(hasher: &mut Sha256, bytes: &[u8]) {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    }
    fn time(t: Option<OffsetDateTime>) -> Vec<u8> {
        t.map(|t| t.unix_timestamp_nanos().to_be_bytes().to_vec())
            .unwrap_or_default()
    }
    let mut hasher = Sha256::new();
    part(&mut hasher, scope.account_id.as_bytes());
    part(&mut hasher, &[u8::from(scope.live_mode)]);
    part(
        &mut hasher,
        filter
            .email_folded
            .as_deref()
            .map(str::as_bytes)
            .unwrap_or(b"\xff"),
    );
    part(&mut hasher, &time(filter.created_after));
    part(&mut hasher, &time(filter.created_before));
    match &filter.ids {
        None => part(&mut hasher, b"\xff"),
        Some(ids) => {
            part(&mut hasher, &(ids.len() as u64).to_be_bytes());
            for id in ids {
                part(&mut hasher, id.as_str().as_bytes());
            }
        }
    }
    hasher.finalize()[..DIGEST_LEN]
        .try_into()
        .expect("SHA-256 digests are 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> Cursor {
        Cursor {
            create_time: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_000)
                .unwrap(),
            id: CustomerId::from_trusted("cus_顧客".into()),
        }
    }

    fn filter(email: &str) -> ListFilter {
        ListFilter {
            email_folded: Some(email.into()),
            ..ListFilter::default()
        }
    }

    #[test]
    fn a_token_round_trips_its_position() {
        let tokens = PageTokens::new(b"key");
        let scope = AccountScope::default_account();
        let token = tokens.issue(&scope, &filter("a@example.com"), &cursor());
        assert_eq!(
            tokens.verify(&scope, &filter("a@example.com"), &token),
            Some(cursor())
        );
    }

    #[test]
    fn other_filters_other_owners_other_keys_and_altered_tokens_fail() {
        let tokens = PageTokens::new(b"key");
        let scope = AccountScope::default_account();
        let token = tokens.issue(&scope, &filter("a@example.com"), &cursor());
        let other_scope = AccountScope {
            live_mode: true,
            ..scope.clone()
        };

        assert_eq!(
            tokens.verify(&scope, &filter("b@example.com"), &token),
            None
        );
        assert_eq!(tokens.verify(&scope, &ListFilter::default(), &token), None);
        assert_eq!(
            tokens.verify(&other_scope, &filter("a@example.com"), &token),
            None
        );
        assert_eq!(
            PageTokens::new(b"other").verify(&scope, &filter("a@example.com"), &token),
            None
        );
        assert_eq!(
            tokens.verify(&scope, &filter("a@example.com"), &token[..token.len() - 2]),
            None
        );
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for index in 0..bytes.len() {
            bytes[index] ^= 1;
            let altered = URL_SAFE_NO_PAD.encode(&bytes);
            assert_eq!(
                tokens.verify(&scope, &filter("a@example.com"), &altered),
                None,
                "byte {index}"
            );
            bytes[index] ^= 1;
        }
        assert_eq!(
            tokens.verify(&scope, &filter("a@example.com"), "not base64!"),
            None
        );
        assert_eq!(tokens.verify(&scope, &filter("a@example.com"), ""), None);
    }
}

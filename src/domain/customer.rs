//! The customer record and the rules that hold between its fields.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::country::CountryCode;
use super::email::EmailAddress;
use super::error::CustomerError;
use super::locale::Locale;
use super::metadata::Metadata;
use super::tax::TaxIdentifier;
use super::text::{bounded_text, identifier};
use super::update_mask::{Leaf, UpdateMask};
use super::violations::Violations;

/// Longest customer id, in characters.
const MAX_CUSTOMER_ID_CHARS: usize = 40;
/// Longest source id, in characters.
const MAX_SOURCE_ID_CHARS: usize = 100;
/// Longest etag a client may send.
const MAX_ETAG_CHARS: usize = 64;
/// Most sources one customer may have.
pub const MAX_SOURCES: usize = 25;

/// Who owns a row: an account and the mode (live or test) of the key that
/// acts for it. Every key and every query of the store starts with these two
/// columns, so rows can later be distributed by account without a change of
/// model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountScope {
    pub account_id: String,
    pub live_mode: bool,
}

impl AccountScope {
    /// The account used until authentication exists: test mode.
    pub fn default_account() -> Self {
        Self {
            account_id: "acct_default".to_owned(),
            live_mode: false,
        }
    }
}

/// A customer id: 1..=40 characters, no whitespace, control characters or `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomerId(String);

impl CustomerId {
    /// Parses a client-chosen id.
    pub fn parse(field: &str, value: &str, violations: &mut Violations) -> Option<Self> {
        identifier(field, value, MAX_CUSTOMER_ID_CHARS, violations).map(Self)
    }

    /// A new lowercase UUIDv7: time-ordered, so new rows land at the end of
    /// the primary-key index instead of splitting pages at random.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// Wraps an id read back from the store, which only holds parsed ids.
    pub fn from_trusted(value: String) -> Self {
        Self(value)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A payment source id: 1..=100 characters with the customer id's rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SourceId(String);

impl SourceId {
    /// Parses a source id.
    pub fn parse(field: &str, value: &str, violations: &mut Violations) -> Option<Self> {
        identifier(field, value, MAX_SOURCE_ID_CHARS, violations).map(Self)
    }

    /// Wraps an id read back from the store.
    pub fn from_trusted(value: String) -> Self {
        Self(value)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An opaque version tag that changes with every write of a customer.
///
/// Random rather than a counter, so that a customer deleted and created
/// again never reuses a tag that a client may still hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Etag(String);

impl Etag {
    /// A fresh tag.
    pub fn generate() -> Self {
        Self(format!("{:016x}", rand::random::<u64>()))
    }

    /// Wraps a tag read back from the store.
    pub fn from_trusted(value: String) -> Self {
        Self(value)
    }

    /// The etag a client sent to guard a write: `None` when empty (no
    /// guard). Any other text is compared as is, but it must be short and
    /// free of control characters like every other string.
    pub fn parse_guard(field: &str, value: &str, violations: &mut Violations) -> Option<Self> {
        if value.is_empty() {
            return None;
        }
        bounded_text(field, value, MAX_ETAG_CHARS, violations).map(Self)
    }

    /// The tag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether the customer is a person or a business.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum CustomerKind {
    #[default]
    Individual,
    Business,
}

/// A postal address; every part optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<CountryCode>,
}

/// Address details some countries need.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdditionalAddressInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neighborhood: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub division: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phonetic_name: Option<String>,
}

/// Where orders for a customer go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipping {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    #[serde(default)]
    pub address: Address,
    #[serde(default)]
    pub additional_address_info: AdditionalAddressInfo,
}

/// Every field of a customer that a client writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    pub email: Option<EmailAddress>,
    pub shipping: Shipping,
    pub default_source_id: Option<SourceId>,
    pub tax_identifiers: Vec<TaxIdentifier>,
    pub locale: Option<Locale>,
    pub kind: CustomerKind,
    pub enabled: bool,
    pub metadata: Metadata,
}

impl Default for Profile {
    /// What an empty create stores: an enabled individual and nothing else.
    fn default() -> Self {
        Self {
            email: None,
            shipping: Shipping::default(),
            default_source_id: None,
            tax_identifiers: Vec::new(),
            locale: None,
            kind: CustomerKind::Individual,
            enabled: true,
            metadata: Metadata::default(),
        }
    }
}

impl Profile {
    /// Copies every leaf named by `mask` from `new` into `self`. A leaf that
    /// is unset in `new` is cleared, back to its default. Metadata entries
    /// named one by one are set, or removed when `new` has no value for them.
    ///
    /// Fails only when single metadata entries push the map over its limit,
    /// which depends on what was stored and so cannot be checked earlier.
    pub fn apply(&mut self, mask: &UpdateMask, new: &Profile) -> Result<(), Violations> {
        for leaf in mask.leaves() {
            let (to, from) = (&mut self.shipping, &new.shipping);
            match leaf {
                Leaf::Email => self.email.clone_from(&new.email),
                Leaf::ShippingName => to.name.clone_from(&from.name),
                Leaf::ShippingPhone => to.phone.clone_from(&from.phone),
                Leaf::ShippingEmail => to.email.clone_from(&from.email),
                Leaf::ShippingOrganization => to.organization.clone_from(&from.organization),
                Leaf::AddressLine1 => to.address.line1.clone_from(&from.address.line1),
                Leaf::AddressLine2 => to.address.line2.clone_from(&from.address.line2),
                Leaf::AddressCity => to.address.city.clone_from(&from.address.city),
                Leaf::AddressPostalCode => {
                    to.address.postal_code.clone_from(&from.address.postal_code)
                }
                Leaf::AddressState => to.address.state.clone_from(&from.address.state),
                Leaf::AddressCountry => to.address.country.clone_from(&from.address.country),
                Leaf::Neighborhood => to
                    .additional_address_info
                    .neighborhood
                    .clone_from(&from.additional_address_info.neighborhood),
                Leaf::Division => to
                    .additional_address_info
                    .division
                    .clone_from(&from.additional_address_info.division),
                Leaf::PhoneticName => to
                    .additional_address_info
                    .phonetic_name
                    .clone_from(&from.additional_address_info.phonetic_name),
                Leaf::DefaultSourceId => self.default_source_id.clone_from(&new.default_source_id),
                Leaf::TaxIdentifiers => self.tax_identifiers.clone_from(&new.tax_identifiers),
                Leaf::Locale => self.locale.clone_from(&new.locale),
                Leaf::Type => self.kind = new.kind,
                Leaf::Enabled => self.enabled = new.enabled,
                Leaf::Metadata => self.metadata.clone_from(&new.metadata),
                // Erasure is not a field copy; the caller handles it.
                Leaf::RequestToBeForgotten => {}
            }
        }
        for key in mask.metadata_keys() {
            self.metadata.set(key, new.metadata.get(key).unwrap_or(""));
        }
        let mut violations = Violations::new();
        self.metadata
            .check_size("customer.metadata", &mut violations);
        violations.into_result(())
    }
}

/// A client's `request_id` for a create, with a fingerprint of what that
/// create asked for, so that a retry can be told from a different request
/// that reuses the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub request_id: String,
    /// SHA-256 over the request id, the owner, the requested customer id
    /// (empty when generated) and the parsed profile. Salted by the first
    /// two, so equal requests of different callers do not look alike.
    pub fingerprint: Vec<u8>,
    /// The id the client asked for, if it chose one. It is still compared
    /// once erasure has cleared the fingerprint.
    pub requested_id: Option<CustomerId>,
}

impl IdempotencyKey {
    /// The key of a create of `profile` under `requested_id`.
    pub fn new(
        scope: &AccountScope,
        request_id: &str,
        requested_id: Option<&CustomerId>,
        profile: &Profile,
    ) -> Self {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for part in [
            request_id,
            &scope.account_id,
            if scope.live_mode { "live" } else { "test" },
            requested_id.map(CustomerId::as_str).unwrap_or(""),
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        // Serialisation is deterministic: struct fields in declaration
        // order, metadata in key order.
        let profile = serde_json::to_vec(profile).expect("a profile always serialises");
        hasher.update(&profile);
        Self {
            request_id: request_id.to_owned(),
            fingerprint: hasher.finalize().to_vec(),
            requested_id: requested_id.cloned(),
        }
    }
}

/// What an update changes: the leaves of `mask` take their values from
/// `values`; or, when `forget` is set, the customer is erased instead.
#[derive(Debug, Clone)]
pub struct CustomerPatch {
    pub mask: UpdateMask,
    pub values: Profile,
    pub forget: bool,
}

/// A payment source attached to a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub id: SourceId,
    pub attach_time: OffsetDateTime,
}

/// A stored customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub id: CustomerId,
    pub profile: Profile,
    pub sources: Vec<Source>,
    /// Set once the customer asked to be forgotten; the profile is then
    /// empty and can no longer change.
    pub forgotten: bool,
    pub live_mode: bool,
    pub create_time: OffsetDateTime,
    pub update_time: OffsetDateTime,
    pub etag: Etag,
}

impl Customer {
    /// Checks that the default source, if any, is one of the attached ones.
    pub fn check_default_source(&self) -> Result<(), CustomerError> {
        match &self.profile.default_source_id {
            Some(id) if !self.sources.iter().any(|s| &s.id == id) => {
                Err(CustomerError::SourceNotAttached)
            }
            _ => Ok(()),
        }
    }

    /// Whether `source` may be attached: `Ok(false)` when it is attached
    /// already (attaching again changes nothing).
    pub fn can_attach(&self, source: &SourceId) -> Result<bool, CustomerError> {
        if self.forgotten {
            return Err(CustomerError::Forgotten);
        }
        if self.sources.iter().any(|s| &s.id == source) {
            return Ok(false);
        }
        if self.sources.len() >= MAX_SOURCES {
            return Err(CustomerError::TooManySources);
        }
        Ok(true)
    }

    /// Adds a source checked with [`Customer::can_attach`]. The first source
    /// of a customer without a default becomes the default.
    pub fn attach(&mut self, source: Source) {
        if self.profile.default_source_id.is_none() {
            self.profile.default_source_id = Some(source.id.clone());
        }
        self.sources.push(source);
    }

    /// Removes a source; when it was the default, there is no default after.
    pub fn detach(&mut self, source: &SourceId) -> Result<(), CustomerError> {
        let index = self
            .sources
            .iter()
            .position(|s| &s.id == source)
            .ok_or(CustomerError::SourceNotFound)?;
        self.sources.remove(index);
        if self.profile.default_source_id.as_ref() == Some(source) {
            self.profile.default_source_id = None;
        }
        Ok(())
    }

    /// Erases every piece of personal data: what remains is the id, the
    /// type, the timestamps, the mode and the fact that it was erased.
    pub fn forget(&mut self) {
        self.profile = Profile {
            kind: self.profile.kind,
            enabled: false,
            ..Profile::default()
        };
        self.sources.clear();
        self.forgotten = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile_with_name(name: &str) -> Profile {
        let mut profile = Profile::default();
        profile.shipping.name = Some(name.to_owned());
        profile.shipping.phone = Some("+49 30 1234567".to_owned());
        profile
    }

    #[test]
    fn applying_a_leaf_copies_only_that_leaf() {
        let mut stored = profile_with_name("Ada");
        let mask = UpdateMask::from_parts([Leaf::ShippingName], []);
        stored.apply(&mask, &profile_with_name("Grace")).unwrap();
        assert_eq!(stored.shipping.name.as_deref(), Some("Grace"));
        assert_eq!(stored.shipping.phone.as_deref(), Some("+49 30 1234567"));
    }

    #[test]
    fn a_named_leaf_without_a_value_is_cleared_to_its_default() {
        let mut stored = profile_with_name("Ada");
        stored.enabled = false;
        stored.kind = CustomerKind::Business;
        let mask = UpdateMask::from_parts([Leaf::ShippingName, Leaf::Enabled, Leaf::Type], []);
        stored.apply(&mask, &Profile::default()).unwrap();
        assert_eq!(stored.shipping.name, None);
        assert!(stored.enabled);
        assert_eq!(stored.kind, CustomerKind::Individual);
    }

    #[test]
    fn metadata_keys_set_and_remove_single_entries() {
        let mut stored = Profile::default();
        stored.metadata.set("keep", "1");
        stored.metadata.set("drop", "2");
        let mut new = Profile::default();
        new.metadata.set("add", "3");
        let mask = UpdateMask::from_parts([], ["add".to_owned(), "drop".to_owned()]);
        stored.apply(&mask, &new).unwrap();
        let keys: Vec<_> = stored.metadata.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["add", "keep"]);
    }

    #[test]
    fn forgetting_keeps_only_the_type_and_disables() {
        let mut customer = Customer {
            id: CustomerId::generate(),
            profile: profile_with_name("Ada"),
            sources: vec![Source {
                id: SourceId::from_trusted("src_1".into()),
                attach_time: OffsetDateTime::UNIX_EPOCH,
            }],
            forgotten: false,
            live_mode: false,
            create_time: OffsetDateTime::UNIX_EPOCH,
            update_time: OffsetDateTime::UNIX_EPOCH,
            etag: Etag::generate(),
        };
        customer.profile.kind = CustomerKind::Business;
        customer.forget();
        let expected = Profile {
            kind: CustomerKind::Business,
            enabled: false,
            ..Profile::default()
        };
        assert_eq!(customer.profile, expected);
        assert!(customer.sources.is_empty() && customer.forgotten);
    }

    fn source(id: &str) -> Source {
        Source {
            id: SourceId::from_trusted(id.into()),
            attach_time: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn empty_customer() -> Customer {
        Customer {
            id: CustomerId::generate(),
            profile: Profile::default(),
            sources: Vec::new(),
            forgotten: false,
            live_mode: false,
            create_time: OffsetDateTime::UNIX_EPOCH,
            update_time: OffsetDateTime::UNIX_EPOCH,
            etag: Etag::generate(),
        }
    }

    #[test]
    fn the_first_source_becomes_the_default_and_detaching_it_clears_the_default() {
        let mut customer = empty_customer();
        customer.attach(source("a"));
        customer.attach(source("b"));
        assert_eq!(
            customer.profile.default_source_id,
            Some(SourceId::from_trusted("a".into()))
        );

        customer
            .detach(&SourceId::from_trusted("a".into()))
            .unwrap();

        assert_eq!(customer.profile.default_source_id, None);
        assert_eq!(customer.sources.len(), 1);
    }

    #[test]
    fn attaching_is_a_no_op_when_attached_and_refused_beyond_the_limit() {
        let mut customer = empty_customer();
        for i in 0..MAX_SOURCES {
            customer.attach(source(&format!("s{i}")));
        }
        assert!(
            !customer
                .can_attach(&SourceId::from_trusted("s0".into()))
                .unwrap()
        );
        assert!(matches!(
            customer.can_attach(&SourceId::from_trusted("new".into())),
            Err(CustomerError::TooManySources)
        ));
        assert!(matches!(
            customer.detach(&SourceId::from_trusted("nope".into())),
            Err(CustomerError::SourceNotFound)
        ));
    }

    #[test]
    fn fingerprints_differ_with_any_part_of_the_request() {
        let scope = AccountScope::default_account();
        let id = CustomerId::from_trusted("cus_1".into());
        let base = IdempotencyKey::new(&scope, "r1", Some(&id), &profile_with_name("Ada"));
        let same = IdempotencyKey::new(&scope, "r1", Some(&id), &profile_with_name("Ada"));
        assert_eq!(base, same);
        for other in [
            IdempotencyKey::new(&scope, "r1", Some(&id), &profile_with_name("Eve")),
            IdempotencyKey::new(&scope, "r1", None, &profile_with_name("Ada")),
            IdempotencyKey::new(
                &AccountScope {
                    live_mode: true,
                    ..scope.clone()
                },
                "r1",
                Some(&id),
                &profile_with_name("Ada"),
            ),
        ] {
            assert_ne!(base.fingerprint, other.fingerprint);
        }
    }

    #[test]
    fn generated_ids_are_lowercase_uuid_v7() {
        let id = CustomerId::generate();
        let uuid = uuid::Uuid::parse_str(id.as_str()).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
        assert_eq!(id.as_str(), id.as_str().to_lowercase());
    }
}

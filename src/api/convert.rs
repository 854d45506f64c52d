//! Conversions between wire messages and domain types.
//!
//! Parsing reads every field, records every violation with its request path,
//! and returns domain values only when the whole request is valid.

use prost_types::Timestamp;
use time::OffsetDateTime;

use super::pb;
use crate::domain::{
    CountryCode, Customer, CustomerId, CustomerKind, EmailAddress, Leaf, Locale, Metadata, Profile,
    Reason, SourceId, TaxIdentifier, UpdateMask, Violations, bounded_text,
};

/// Longest name, organisation, address line or additional address field.
const MAX_TEXT_CHARS: usize = 200;
/// Longest phone number.
const MAX_PHONE_CHARS: usize = 50;
/// Most tax identifiers per customer.
const MAX_TAX_IDENTIFIERS: usize = 10;

/// Parses every writable field of `customer` into a profile. `prefix` is
/// the message's path in the request (`customer`). An empty string counts
/// as unset, so that sending `""` clears a field.
pub fn parse_profile(
    prefix: &str,
    customer: &pb::Customer,
    violations: &mut Violations,
) -> Profile {
    let field = |name: &str| format!("{prefix}.{name}");
    let shipping = customer.shipping.clone().unwrap_or_default();
    let address = shipping.address.clone().unwrap_or_default();
    let extra = shipping.additional_address_info.clone().unwrap_or_default();
    let text = |name: &str, value: &Option<String>, max: usize, violations: &mut Violations| {
        present(value).and_then(|v| bounded_text(&field(name), v, max, violations))
    };

    let mut profile = Profile {
        email: present(&customer.email)
            .and_then(|v| EmailAddress::parse(&field("email"), v, violations)),
        default_source_id: present(&customer.default_source_id)
            .and_then(|v| SourceId::parse(&field("default_source_id"), v, violations)),
        tax_identifiers: parse_tax_identifiers(
            &field("tax_identifiers"),
            &customer.tax_identifiers,
            violations,
        ),
        locale: present(&customer.locale)
            .and_then(|v| Locale::parse(&field("locale"), v, violations)),
        kind: parse_kind(&field("type"), customer.r#type, violations),
        enabled: customer.enabled.unwrap_or(true),
        metadata: Metadata::parse(&field("metadata"), &customer.metadata, violations),
        ..Profile::default()
    };

    let s = &mut profile.shipping;
    s.name = text("shipping.name", &shipping.name, MAX_TEXT_CHARS, violations);
    s.phone = text(
        "shipping.phone",
        &shipping.phone,
        MAX_PHONE_CHARS,
        violations,
    );
    s.email = present(&shipping.email)
        .and_then(|v| EmailAddress::parse(&field("shipping.email"), v, violations));
    s.organization = text(
        "shipping.organization",
        &shipping.organization,
        MAX_TEXT_CHARS,
        violations,
    );

    let a = &mut s.address;
    a.line1 = text(
        "shipping.address.line1",
        &address.line1,
        MAX_TEXT_CHARS,
        violations,
    );
    a.line2 = text(
        "shipping.address.line2",
        &address.line2,
        MAX_TEXT_CHARS,
        violations,
    );
    a.city = text(
        "shipping.address.city",
        &address.city,
        MAX_TEXT_CHARS,
        violations,
    );
    a.postal_code = text(
        "shipping.address.postal_code",
        &address.postal_code,
        MAX_TEXT_CHARS,
        violations,
    );
    a.state = text(
        "shipping.address.state",
        &address.state,
        MAX_TEXT_CHARS,
        violations,
    );
    a.country = present(&address.country)
        .and_then(|v| CountryCode::parse(&field("shipping.address.country"), v, violations));

    let x = &mut s.additional_address_info;
    let base = "shipping.additional_address_info";
    x.neighborhood = text(
        &format!("{base}.neighborhood"),
        &extra.neighborhood,
        MAX_TEXT_CHARS,
        violations,
    );
    x.division = text(
        &format!("{base}.division"),
        &extra.division,
        MAX_TEXT_CHARS,
        violations,
    );
    x.phonetic_name = text(
        &format!("{base}.phonetic_name"),
        &extra.phonetic_name,
        MAX_TEXT_CHARS,
        violations,
    );
    profile
}

/// The value of an optional string field, with `""` counted as unset.
fn present(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

fn parse_kind(field: &str, value: i32, violations: &mut Violations) -> CustomerKind {
    match pb::CustomerType::try_from(value) {
        Ok(pb::CustomerType::Business) => CustomerKind::Business,
        Ok(_) => CustomerKind::Individual,
        Err(_) => {
            violations.add(field, Reason::Unsupported, "must be a CustomerType value");
            CustomerKind::Individual
        }
    }
}

fn parse_tax_identifiers(
    field: &str,
    values: &[pb::TaxIdentifier],
    violations: &mut Violations,
) -> Vec<TaxIdentifier> {
    if values.len() > MAX_TAX_IDENTIFIERS {
        violations.add(
            field,
            Reason::TooMany,
            format!(
                "must have at most {MAX_TAX_IDENTIFIERS} entries, got {}",
                values.len()
            ),
        );
    }
    let mut parsed: Vec<TaxIdentifier> = Vec::with_capacity(values.len());
    for (index, value) in values.iter().enumerate() {
        let path = format!("{field}[{index}]");
        let Some(id) = TaxIdentifier::parse(&path, &value.r#type, &value.value, violations) else {
            continue;
        };
        if parsed.contains(&id) {
            violations.add(path, Reason::Duplicate, "repeats an earlier tax identifier");
            continue;
        }
        parsed.push(id);
    }
    parsed
}

/// Parses a customer id that must be present.
pub fn parse_id(field: &str, value: &str, violations: &mut Violations) -> Option<CustomerId> {
    CustomerId::parse(field, value, violations)
}

/// The update mask of a request: the given paths, or, when there are none,
/// every populated field of `customer`.
pub fn resolve_mask(
    mask: Option<&prost_types::FieldMask>,
    customer: &pb::Customer,
    violations: &mut Violations,
) -> UpdateMask {
    match mask {
        Some(mask) if !mask.paths.is_empty() => UpdateMask::parse(&mask.paths, violations),
        _ => populated(customer),
    }
}

/// The leaves of `customer` that are set: optional fields that are present,
/// and lists, maps and enums that are not empty.
fn populated(customer: &pb::Customer) -> UpdateMask {
    let shipping = customer.shipping.clone().unwrap_or_default();
    let address = shipping.address.clone().unwrap_or_default();
    let extra = shipping.additional_address_info.clone().unwrap_or_default();
    let candidates = [
        (Leaf::Email, customer.email.is_some()),
        (Leaf::ShippingName, shipping.name.is_some()),
        (Leaf::ShippingPhone, shipping.phone.is_some()),
        (Leaf::ShippingEmail, shipping.email.is_some()),
        (Leaf::ShippingOrganization, shipping.organization.is_some()),
        (Leaf::AddressLine1, address.line1.is_some()),
        (Leaf::AddressLine2, address.line2.is_some()),
        (Leaf::AddressCity, address.city.is_some()),
        (Leaf::AddressPostalCode, address.postal_code.is_some()),
        (Leaf::AddressState, address.state.is_some()),
        (Leaf::AddressCountry, address.country.is_some()),
        (Leaf::Neighborhood, extra.neighborhood.is_some()),
        (Leaf::Division, extra.division.is_some()),
        (Leaf::PhoneticName, extra.phonetic_name.is_some()),
        (Leaf::DefaultSourceId, customer.default_source_id.is_some()),
        (Leaf::TaxIdentifiers, !customer.tax_identifiers.is_empty()),
        (Leaf::Locale, customer.locale.is_some()),
        (Leaf::Type, customer.r#type != 0),
        (Leaf::Enabled, customer.enabled.is_some()),
        (
            Leaf::RequestToBeForgotten,
            customer.request_to_be_forgotten.is_some(),
        ),
        (Leaf::Metadata, !customer.metadata.is_empty()),
    ];
    let leaves = candidates
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(leaf, _)| leaf);
    UpdateMask::from_parts(leaves, [])
}

/// A copy of `from` holding only what `mask` names, so that an update
/// validates exactly the values it will write.
pub fn masked(mask: &UpdateMask, from: &pb::Customer) -> pb::Customer {
    let mut to = pb::Customer::default();
    let shipping = from.shipping.clone().unwrap_or_default();
    let address = shipping.address.clone().unwrap_or_default();
    let extra = shipping.additional_address_info.clone().unwrap_or_default();
    let mut to_shipping = pb::Shipping::default();
    let mut to_address = pb::Address::default();
    let mut to_extra = pb::AdditionalAddressInfo::default();
    for leaf in mask.leaves() {
        match leaf {
            Leaf::Email => to.email.clone_from(&from.email),
            Leaf::ShippingName => to_shipping.name.clone_from(&shipping.name),
            Leaf::ShippingPhone => to_shipping.phone.clone_from(&shipping.phone),
            Leaf::ShippingEmail => to_shipping.email.clone_from(&shipping.email),
            Leaf::ShippingOrganization => {
                to_shipping.organization.clone_from(&shipping.organization)
            }
            Leaf::AddressLine1 => to_address.line1.clone_from(&address.line1),
            Leaf::AddressLine2 => to_address.line2.clone_from(&address.line2),
            Leaf::AddressCity => to_address.city.clone_from(&address.city),
            Leaf::AddressPostalCode => to_address.postal_code.clone_from(&address.postal_code),
            Leaf::AddressState => to_address.state.clone_from(&address.state),
            Leaf::AddressCountry => to_address.country.clone_from(&address.country),
            Leaf::Neighborhood => to_extra.neighborhood.clone_from(&extra.neighborhood),
            Leaf::Division => to_extra.division.clone_from(&extra.division),
            Leaf::PhoneticName => to_extra.phonetic_name.clone_from(&extra.phonetic_name),
            Leaf::DefaultSourceId => to.default_source_id.clone_from(&from.default_source_id),
            Leaf::TaxIdentifiers => to.tax_identifiers.clone_from(&from.tax_identifiers),
            Leaf::Locale => to.locale.clone_from(&from.locale),
            Leaf::Type => to.r#type = from.r#type,
            Leaf::Enabled => to.enabled = from.enabled,
            Leaf::RequestToBeForgotten => to.request_to_be_forgotten = from.request_to_be_forgotten,
            Leaf::Metadata => to.metadata.clone_from(&from.metadata),
        }
    }
    for key in mask.metadata_keys() {
        let value = from.metadata.get(key).cloned().unwrap_or_default();
        to.metadata.insert(key.to_owned(), value);
    }
    to_shipping.address = Some(to_address);
    to_shipping.additional_address_info = Some(to_extra);
    to.shipping = Some(to_shipping);
    to
}

/// The wire form of a stored customer.
pub fn customer_to_proto(customer: Customer) -> pb::Customer {
    let Customer {
        id,
        profile,
        sources,
        forgotten,
        live_mode,
        create_time,
        update_time,
        etag,
    } = customer;
    let shipping = profile.shipping;
    let address = shipping.address;
    let extra = shipping.additional_address_info;
    let has_shipping = shipping.name.is_some()
        || shipping.phone.is_some()
        || shipping.email.is_some()
        || shipping.organization.is_some()
        || address != Default::default()
        || extra != Default::default();
    pb::Customer {
        id: id.as_str().to_owned(),
        email: profile.email.map(|e| e.as_str().to_owned()),
        shipping: has_shipping.then(|| pb::Shipping {
            name: shipping.name,
            phone: shipping.phone,
            email: shipping.email.map(|e| e.as_str().to_owned()),
            organization: shipping.organization,
            address: (address != Default::default()).then(|| pb::Address {
                line1: address.line1,
                line2: address.line2,
                city: address.city,
                postal_code: address.postal_code,
                state: address.state,
                country: address.country.map(|c| c.as_str().to_owned()),
            }),
            additional_address_info: (extra != Default::default()).then_some(
                pb::AdditionalAddressInfo {
                    neighborhood: extra.neighborhood,
                    division: extra.division,
                    phonetic_name: extra.phonetic_name,
                },
            ),
        }),
        default_source_id: profile.default_source_id.map(|s| s.as_str().to_owned()),
        sources: sources
            .into_iter()
            .map(|s| pb::Source {
                id: s.id.as_str().to_owned(),
                attach_time: Some(timestamp(s.attach_time)),
            })
            .collect(),
        tax_identifiers: profile
            .tax_identifiers
            .iter()
            .map(|t| pb::TaxIdentifier {
                r#type: t.kind().to_owned(),
                value: t.value().to_owned(),
            })
            .collect(),
        locale: profile.locale.map(|l| l.as_str().to_owned()),
        r#type: match profile.kind {
            CustomerKind::Individual => pb::CustomerType::Individual,
            CustomerKind::Business => pb::CustomerType::Business,
        } as i32,
        enabled: Some(profile.enabled),
        request_to_be_forgotten: forgotten.then_some(true),
        metadata: profile
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        live_mode,
        create_time: Some(timestamp(create_time)),
        update_time: Some(timestamp(update_time)),
        etag: etag.as_str().to_owned(),
    }
}

/// A protobuf timestamp of `time`.
pub fn timestamp(time: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: time.unix_timestamp(),
        nanos: time.nanosecond() as i32,
    }
}
/// Parses a protobuf timestamp; it must lie in years 1..=9999 with nanos in
/// range.
pub fn parse_timestamp(
    field: &str,
    value: &Timestamp,
    violations: &mut Violations,
) -> Option<OffsetDateTime> {
    const MIN_SECONDS: i64 = -62_135_596_800; // 0001-01-01T00:00:00Z
    const MAX_SECONDS: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let in_range = (MIN_SECONDS..=MAX_SECONDS).contains(&value.seconds)
        && (0..1_000_000_000).contains(&value.nanos);
    let time = in_range
        .then(|| OffsetDateTime::from_unix_timestamp(value.seconds).ok())
        .flatten()
        .and_then(|t| t.replace_nanosecond(value.nanos as u32).ok());
    if time.is_none() {
        violations.add(
            field,
            Reason::OutOfRange,
            "must be a valid time between years 1 and 9999",
        );
    }
    time
}

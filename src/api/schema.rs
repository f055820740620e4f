//! Schema refinements the derive cannot express with plain attributes: Kubernetes list and map
//! semantics, CEL rules (`x-kubernetes-validations`) and the limits that keep their estimated
//! cost within the API server's budget.
//!
//! Each function is a schemars field transform. It only adds validation keywords and never
//! touches `type`, so it works the same for `T` and `Option<T>` fields (the generator makes the
//! latter `nullable` afterwards).

use schemars::Schema;
use serde_json::{Value, json};

use super::RESERVED_PREFIX;

/// At most this many entries in `spec.accessListIps`.
pub const MAX_ACCESS_LIST_ENTRIES: u64 = 200;
/// Longest textual IPv6 address (45, with an embedded IPv4 part) plus "/128", rounded up. CEL's
/// cost estimate scales with it, so it must be bounded.
pub const MAX_ACCESS_LIST_ENTRY_LEN: u64 = 64;
/// At most this many labels or annotations in the token Secret template. Bounds the cost of
/// the reserved-key rule.
pub const MAX_TEMPLATE_ENTRIES: u64 = 64;

/// DNS-1123 subdomain: what Kubernetes accepts as a Secret name.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// What Kubernetes accepts as a Secret data key (apart from "." and "..", see the CEL rule).
pub const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";
/// What Kubernetes accepts as a label value (empty allowed).
pub const LABEL_VALUE_PATTERN: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";

fn set(schema: &mut Schema, key: &str, value: Value) {
    schema.insert(key.to_string(), value);
}

fn rule(rule: &str, message: &str) -> Value {
    json!({ "rule": rule, "message": message })
}

/// `spec.accessListIps`: a set of IP addresses or CIDR blocks.
pub fn access_list(schema: &mut Schema) {
    set(schema, "maxItems", json!(MAX_ACCESS_LIST_ENTRIES));
    // `set` makes the API server reject duplicates and lets server-side apply merge entries.
    set(schema, "x-kubernetes-list-type", json!("set"));
    set(
        schema,
        "items",
        json!({
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ACCESS_LIST_ENTRY_LEN,
            "x-kubernetes-validations": [rule(
                "isIP(self) || isCIDR(self)",
                "must be an IPv4 or IPv6 address or CIDR block, like 203.0.113.7, 198.51.100.0/24 or 2001:db8::/32",
            )],
        }),
    );
}

/// A Secret name in the same namespace.
pub fn secret_name(schema: &mut Schema) {
    set(schema, "minLength", json!(1));
    set(schema, "maxLength", json!(253));
    set(schema, "pattern", json!(DNS_SUBDOMAIN_PATTERN));
}

/// A Secret data key.
pub fn secret_key(schema: &mut Schema) {
    set(schema, "default", json!(super::DEFAULT_TOKEN_KEY));
    set(schema, "minLength", json!(1));
    set(schema, "maxLength", json!(253));
    set(schema, "pattern", json!(SECRET_KEY_PATTERN));
    set(
        schema,
        "x-kubernetes-validations",
        json!([rule(
            "self != '.' && !self.startsWith('..')",
            "must not be '.' or start with '..'"
        )]),
    );
}

/// The reserved-key rule shared by labels and annotations. The message is static: a message
/// expression naming the offending keys would have to join strings of unbounded length (map
/// keys cannot carry maxLength), which the API server's cost estimate rejects.
fn reserved_keys_rule(what: &str) -> Value {
    json!({
        "rule": format!("self.all(k, !k.startsWith('{RESERVED_PREFIX}'))"),
        "message": format!("{what} keys under {RESERVED_PREFIX} are reserved for the operator"),
        "reason": "FieldValueForbidden",
    })
}

/// `spec.tokenSecret.labels`: label values as Kubernetes accepts them, no reserved keys.
pub fn labels(schema: &mut Schema) {
    set(schema, "maxProperties", json!(MAX_TEMPLATE_ENTRIES));
    set(
        schema,
        "additionalProperties",
        json!({ "type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN }),
    );
    set(
        schema,
        "x-kubernetes-validations",
        json!([reserved_keys_rule("label")]),
    );
}

/// `spec.tokenSecret.annotations`: no reserved keys.
pub fn annotations(schema: &mut Schema) {
    set(schema, "maxProperties", json!(MAX_TEMPLATE_ENTRIES));
    set(
        schema,
        "x-kubernetes-validations",
        json!([reserved_keys_rule("annotation")]),
    );
}

/// `status.conditions`: one entry per condition type, merged by type under server-side apply.
pub fn conditions(schema: &mut Schema) {
    set(schema, "x-kubernetes-list-type", json!("map"));
    set(schema, "x-kubernetes-list-map-keys", json!(["type"]));
}

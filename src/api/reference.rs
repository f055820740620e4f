//! `docs/reference.md`: the field reference, rendered from the generated CRD so that it says
//! exactly what the API server enforces (descriptions, defaults, patterns, limits, CEL rules).

use std::fmt::Write;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

use super::crd::REGENERATE_COMMAND;
use super::{DEFAULT_TOKEN_KEY, FINALIZER, ROTATE_ANNOTATION};

/// Renders the reference for every version of `crd`.
pub fn render(crd: &CustomResourceDefinition) -> String {
    let mut out = String::new();
    let names = &crd.spec.names;
    let _ = writeln!(out, "# {} reference\n", names.kind);
    let _ = writeln!(
        out,
        "<!-- Generated from src/api by `{REGENERATE_COMMAND}`. Do not edit. -->\n"
    );
    for version in &crd.spec.versions {
        let short = names.short_names.clone().unwrap_or_default().join("`, `");
        let categories = names.categories.clone().unwrap_or_default().join("`, `");
        let _ = writeln!(
            out,
            "`apiVersion: {}/{}`, `kind: {}`; plural `{}`, short name `{}`, category `{}`; {}, \
             with a status subresource.\n",
            crd.spec.group,
            version.name,
            names.kind,
            names.plural,
            short,
            categories,
            crd.spec.scope.to_lowercase(),
        );
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null);
        if let Some(d) = schema.get("description").and_then(Value::as_str) {
            let _ = writeln!(out, "{d}\n");
        }
        write_metadata_notes(&mut out);
        if let Some(cols) = &version.additional_printer_columns {
            let _ = writeln!(out, "## Columns of `kubectl get {}`\n", names.plural);
            let _ = writeln!(out, "| Column | JSONPath | Description |");
            let _ = writeln!(out, "|---|---|---|");
            for c in cols {
                // Columns with a priority show only with `-o wide`.
                let wide = if c.priority.unwrap_or(0) > 0 {
                    " (`-o wide`)"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "| {}{wide} | `{}` | {} |",
                    c.name,
                    c.json_path,
                    c.description.as_deref().unwrap_or_default()
                );
            }
            out.push('\n');
        }
        let root_required = required_of(&schema);
        for top in ["spec", "status"] {
            if let Some(s) = schema.get("properties").and_then(|p| p.get(top)) {
                let required = root_required.iter().any(|r| r == top);
                write_field(&mut out, 2, top, s, required);
            }
        }
    }
    out
}

fn write_metadata_notes(out: &mut String) {
    let _ = writeln!(out, "## Metadata\n");
    let _ = writeln!(
        out,
        "- Annotation `{ROTATE_ANNOTATION}`: any change of its value revokes the token and \
         issues a new one, e.g. `kubectl annotate lt/NAME {ROTATE_ANNOTATION}=\"$(date +%s)\" \
         --overwrite`."
    );
    let _ = writeln!(
        out,
        "- Finalizer `{FINALIZER}`: added by the operator; on deletion it revokes the token in \
         Atlas (unless `deletionPolicy: Retain`) before letting the LinkToken go."
    );
    let _ = writeln!(
        out,
        "- The token Secret defaults to the LinkToken's name and key `{DEFAULT_TOKEN_KEY}`.\n"
    );
}

fn required_of(schema: &Value) -> Vec<String> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// One section per field, depth first, in schema (alphabetical) order; `spec` and `status`
/// get level-2 headings, every field below them level 3.
fn write_field(out: &mut String, level: usize, path: &str, schema: &Value, required: bool) {
    let _ = writeln!(out, "{} `{path}`\n", "#".repeat(level));
    if let Some(d) = schema.get("description").and_then(Value::as_str) {
        let _ = writeln!(out, "{}\n", d.trim());
    }
    let _ = writeln!(out, "- Type: {}", type_name(schema));
    let _ = writeln!(out, "- Required: {}", if required { "yes" } else { "no" });
    if let Some(d) = schema.get("default") {
        let _ = writeln!(out, "- Default: `{d}`");
    }
    for line in constraints(schema) {
        let _ = writeln!(out, "- {line}");
    }
    if let Some(items) = schema.get("items") {
        for line in constraints(items) {
            let _ = writeln!(out, "- Each entry: {line}");
        }
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        for line in constraints(values) {
            let _ = writeln!(out, "- Each value: {line}");
        }
    }
    out.push('\n');

    let (children_of, child_prefix) = match schema.get("items") {
        Some(items) => (items, format!("{path}[]")),
        None => (schema, path.to_string()),
    };
    if let Some(props) = children_of.get("properties").and_then(Value::as_object) {
        let req = required_of(children_of);
        for (name, child) in props {
            let is_required = req.iter().any(|r| r == name);
            let child_path = format!("{child_prefix}.{name}");
            write_field(out, 3, &child_path, child, is_required);
        }
    }
}

fn type_name(schema: &Value) -> String {
    let base = schema.get("type").and_then(Value::as_str).unwrap_or("any");
    match base {
        "array" => format!(
            "array of {}",
            schema.get("items").map(type_name).unwrap_or_default()
        ),
        "object" => match schema.get("additionalProperties").filter(|v| v.is_object()) {
            Some(values) => format!("map of string to {}", type_name(values)),
            None => "object".to_string(),
        },
        "string" => match schema.get("format").and_then(Value::as_str) {
            Some(f) => format!("string ({f})"),
            None => "string".to_string(),
        },
        other => match schema.get("format").and_then(Value::as_str) {
            Some(f) => format!("{other} ({f})"),
            None => other.to_string(),
        },
    }
}

/// The validation keywords of one schema node, in words.
fn constraints(schema: &Value) -> Vec<String> {
    let mut out = vec![];
    let num = |k: &str| schema.get(k).and_then(Value::as_u64);
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        let vals: Vec<String> = e.iter().map(|v| format!("`{}`", plain(v))).collect();
        out.push(format!("One of: {}", vals.join(", ")));
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        out.push(format!("Pattern: `{p}`"));
    }
    match (num("minLength"), num("maxLength")) {
        (Some(min), Some(max)) => out.push(format!("{min} to {max} characters long")),
        (None, Some(max)) => out.push(format!("At most {max} characters long")),
        (Some(min), None) => out.push(format!("At least {min} characters long")),
        (None, None) => {}
    }
    if let Some(max) = num("maxItems") {
        out.push(format!("At most {max} entries"));
    }
    if let Some(max) = num("maxProperties") {
        out.push(format!("At most {max} entries"));
    }
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => out.push("Entries are unique (list type `set`)".to_string()),
        Some("map") => {
            let keys = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().map(plain).collect::<Vec<_>>().join("`, `"))
                .unwrap_or_default();
            out.push(format!("One entry per `{keys}` (list type `map`)"));
        }
        _ => {}
    }
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for r in rules {
            let rule = r.get("rule").map(plain).unwrap_or_default();
            match r.get("message").map(plain) {
                Some(m) => out.push(format!("Rule `{rule}`: {m}")),
                None => out.push(format!("Rule `{rule}`")),
            }
        }
    }
    out
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::crd::{REFERENCE_PATH, crd};

    #[test]
    fn documents_every_spec_field_with_its_validation() {
        let doc = render(&crd());
        for field in [
            "spec.orgId",
            "spec.accessListIps",
            "spec.credentialsSecretRef.name",
            "spec.tokenSecret.name",
            "spec.tokenSecret.key",
            "spec.tokenSecret.labels",
            "spec.tokenSecret.annotations",
            "spec.deletionPolicy",
            "status.conditions[].reason",
            "status.issuedFor.tokenSha256",
            "status.inFlight.startedAt",
            "status.atlasError.httpStatus",
        ] {
            assert!(doc.contains(&format!("### `{field}`\n")), "{field} missing");
        }
        for top in ["spec", "status"] {
            assert!(doc.contains(&format!("\n## `{top}`\n")), "{top} missing");
        }
        assert!(doc.contains("Pattern: `^([a-f0-9]{24})$`"));
        assert!(doc.contains("Rule `isIP(self) || isCIDR(self)`"));
        assert!(doc.contains("One of: `Delete`, `Retain`"));
        assert!(doc.contains("Default: `\"Delete\"`"));
    }

    #[test]
    fn checked_in_reference_matches_the_types() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reference.md");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == render(&crd()),
            "{REFERENCE_PATH} is out of date with src/api; regenerate it with `{REGENERATE_COMMAND}`"
        );
    }
}

//! The LinkToken CustomResourceDefinition, generated from the Rust types and checked in under
//! `crds/` so it can be installed without building the operator.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

use super::LinkToken;

/// Where the CRD is checked in, relative to the repository root.
pub const CRD_PATH: &str = "crds/linktoken.yaml";
/// Where the field reference is checked in, relative to the repository root.
pub const REFERENCE_PATH: &str = "docs/reference.md";
/// The command that regenerates both files; drift tests print it.
pub const REGENERATE_COMMAND: &str = "cargo run --bin crdgen -- --write";

/// The LinkToken CRD as the API server should see it.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = LinkToken::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            unwrap_descriptions(schema);
        }
    }
    crd
}

/// Doc comments are wrapped at 100 columns; `kubectl explain` and the reference wrap text
/// themselves, so keep paragraph breaks only.
fn unwrap_descriptions(schema: &mut JSONSchemaProps) {
    if let Some(d) = schema.description.as_mut() {
        *d = d
            .split("\n\n")
            .map(|para| {
                para.split('\n')
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n\n");
    }
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        unwrap_descriptions(child);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        unwrap_descriptions(items);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = schema.additional_properties.as_mut() {
        unwrap_descriptions(values);
    }
}

/// The CRD as YAML, as checked in at [`CRD_PATH`].
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    // One line per description (as kubectl and the chart's copy show them), not folded at 80.
    let mut options = serde_saphyr::SerializerOptions::default();
    options.prefer_block_scalars = false;
    let body = serde_saphyr::to_string_with_options(&crd(), options)?;
    Ok(format!(
        "# Generated from src/api by `{REGENERATE_COMMAND}`. Do not edit.\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn schema() -> Value {
        let crd = crd();
        let version = &crd.spec.versions[0];
        let schema = version.schema.as_ref().unwrap().open_api_v3_schema.as_ref();
        serde_json::to_value(schema.unwrap()).unwrap()
    }

    /// Every property must carry a description: it is the user's only documentation in
    /// `kubectl explain` and in docs/reference.md.
    fn assert_described(path: &str, schema: &Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                let p = format!("{path}.{name}");
                // apiVersion, kind and metadata are Kubernetes' own, described by it.
                let ours = !path.is_empty() || name == "spec" || name == "status";
                if ours && prop.get("description").and_then(Value::as_str).is_none() {
                    missing.push(p.clone());
                }
                if ours {
                    assert_described(&p, prop, missing);
                }
            }
        }
        if let Some(items) = schema.get("items") {
            assert_described(&format!("{path}[]"), items, missing);
        }
    }

    #[test]
    fn every_field_has_a_description() {
        let mut missing = vec![];
        assert_described("", &schema(), &mut missing);
        assert!(
            missing.is_empty(),
            "fields without description: {missing:?}"
        );
    }

    #[test]
    fn names_printer_columns_and_subresources_match_the_contract() {
        let crd = crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("linktokens.atlasmigration.io")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["lt".to_string()]));
        // `kubectl get atlas` lists LinkTokens with the Atlas Kubernetes Operator's resources.
        assert_eq!(crd.spec.names.categories, Some(vec!["atlas".to_string()]));
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let cols: Vec<_> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.json_path.as_str(),
                    c.priority.unwrap_or(0),
                )
            })
            .collect();
        // The contract's columns by default; Message and Issued only with `-o wide`.
        assert_eq!(
            cols,
            [
                (
                    "Ready",
                    r#".status.conditions[?(@.type=="Ready")].status"#,
                    0
                ),
                (
                    "Reason",
                    r#".status.conditions[?(@.type=="Ready")].reason"#,
                    0
                ),
                ("Org", ".spec.orgId", 0),
                ("Secret", ".status.tokenSecretName", 0),
                (
                    "Message",
                    r#".status.conditions[?(@.type=="Ready")].message"#,
                    1
                ),
                ("Issued", ".status.issuedAt", 1),
                ("Age", ".metadata.creationTimestamp", 0),
            ]
        );
    }

    #[test]
    fn spec_schema_carries_the_validation() {
        let s = schema();
        let spec = &s["properties"]["spec"];
        assert_eq!(
            spec["required"],
            serde_json::json!(["credentialsSecretRef", "orgId"])
        );
        let p = &spec["properties"];
        assert_eq!(p["orgId"]["pattern"], "^([a-f0-9]{24})$");
        assert_eq!(p["accessListIps"]["maxItems"], 200);
        assert_eq!(p["accessListIps"]["x-kubernetes-list-type"], "set");
        assert_eq!(p["accessListIps"]["default"], serde_json::json!([]));
        let ip_rule = &p["accessListIps"]["items"]["x-kubernetes-validations"][0]["rule"];
        assert_eq!(ip_rule, "isIP(self) || isCIDR(self)");
        assert_eq!(
            p["deletionPolicy"]["enum"],
            serde_json::json!(["Delete", "Retain"])
        );
        assert_eq!(p["deletionPolicy"]["default"], "Delete");
        let cred = &p["credentialsSecretRef"];
        assert_eq!(cred["required"], serde_json::json!(["name"]));
        assert_eq!(cred["properties"].as_object().unwrap().len(), 1);
        let ts = &p["tokenSecret"]["properties"];
        assert_eq!(ts["key"]["default"], "linkToken");
        for map in ["labels", "annotations"] {
            let rule = &ts[map]["x-kubernetes-validations"][0]["rule"];
            assert!(
                rule.as_str().unwrap().contains("atlasmigration.io/"),
                "{map}"
            );
        }
        let conditions = &s["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
    }

    #[test]
    fn checked_in_crd_matches_the_types() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/linktoken.yaml");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == crd_yaml().unwrap(),
            "{CRD_PATH} is out of date with src/api; regenerate it with `{REGENERATE_COMMAND}`"
        );
    }
}

//! The custom resources a gateway reads and writes: the Multi-Cluster Services API's
//! `ServiceExport` and `ServiceImport` (`multicluster.x-k8s.io/v1alpha1`, the MCS API's own
//! shape, so other MCS tools read them), strait's `Link` (`strait.dev/v1alpha1`) and the six
//! policy kinds (`policy.strait.dev/v1alpha1`, one CRD each, the spec of the documents
//! `strait apply` takes). `deploy/crds/` and the Helm chart's `crds/` hold the CRDs these types
//! generate; a test fails when they differ (`STRAIT_WRITE_CRDS=1` rewrites the files).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use strait_federation::policy::PolicyKind;

/// Marks the Service of the same namespace and name for export to the clusterset.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceExport",
    namespaced,
    status = "ServiceExportStatus",
    shortname = "svcex"
)]
pub struct ServiceExportSpec {}

/// What the exporting gateway says of an export: `Valid`, and `Conflict` between clusters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceExportStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A service of the clusterset as this cluster sees it: its ports, the virtual address its
/// clusterset name answers with, and the clusters that export it.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceImport",
    namespaced,
    status = "ServiceImportStatus",
    shortname = "svcim",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".spec.ips"}"#,
    printcolumn = r#"{"name":"Clusters","type":"string","jsonPath":".status.clusters[*].cluster"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportSpec {
    /// The clusterset address (`ClusterSetIP`); empty for `Headless`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// `ClusterSetIP` or `Headless`.
    #[serde(rename = "type")]
    pub kind: String,
    pub ports: Vec<ServicePort>,
}

/// One port of an imported service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TCP` (strait carries TCP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    pub port: i32,
}

/// The clusters that export an imported service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceImportStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterStatus>,
}

/// One exporting cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterStatus {
    pub cluster: String,
}

/// A link to another cluster's gateway, applied in this cluster (`kubectl apply -f` of what
/// `strait link` prints in the other cluster): the gateway dials it, and says in the status
/// whether the peer admitted it.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "strait.dev",
    version = "v1alpha1",
    kind = "Link",
    namespaced,
    status = "LinkStatus",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.cluster"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LinkSpec {
    /// The cluster to link to.
    pub cluster: String,
    /// The trust domain both clusters share.
    pub trust_domain: String,
    /// That cluster's gateway address for QUIC (`host:port`).
    pub gateway_address: String,
    /// The fingerprint of the root that cluster's certificates chain to.
    pub root_fingerprint: String,
    /// The Secret (in this namespace) holding the join token.
    pub token_secret: SecretKey,
    /// When the token stops being accepted for a first use (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// A key of a Secret in the Link's namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKey {
    pub name: String,
    /// The key in the Secret's data; `token` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Whether the link is up: a `Ready` condition whose reason says why not (`Refused`, with the
/// peer's refusal as the message; `Connecting`; `Invalid`; `SecretNotFound`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LinkStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The spec of a policy resource: the `spec` of the policy document `strait apply` takes, as
/// written. The CRD leaves it free-form (Kubernetes 1.20 has no CEL, and the policy parser's
/// checks reach further than a schema): the gateway checks it with the same parser as
/// `strait apply` and says what is wrong in the status.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "policy.strait.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    namespaced,
    status = "PolicyStatus"
)]
#[serde(transparent)]
pub struct PolicySpec(pub serde_json::Map<String, serde_json::Value>);

impl JsonSchema for PolicySpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PolicySpec".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "description": "The spec of the policy document, as `strait apply` takes it: checked by the gateway, which says what is wrong in status.",
            "x-kubernetes-preserve-unknown-fields": true,
        })
    }
}

/// Where the mesh-wide version a policy resource shows was made, and whether the gateway
/// accepted the resource's spec (`Accepted`: True, or False with the `strait apply` message).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The cluster where the version in force across the mesh was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The version in force across the mesh (a hybrid logical clock stamp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// The generation of the spec the gateway last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The resource name (plural) of a policy kind.
pub fn policy_plural(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::AuthorizationPolicy => "authorizationpolicies",
        PolicyKind::HttpRoute => "httproutes",
        PolicyKind::RateLimitPolicy => "ratelimitpolicies",
        PolicyKind::Quota => "quotas",
        PolicyKind::RequestAuthentication => "requestauthentications",
        PolicyKind::FailoverPolicy => "failoverpolicies",
    }
}

/// The group of the policy resources.
pub const POLICY_GROUP: &str = "policy.strait.dev";

/// The CRD of one policy kind: the same shape for every kind (a free-form spec, the
/// [`PolicyStatus`]), under the kind's own names.
pub fn policy_crd(kind: PolicyKind) -> CustomResourceDefinition {
    use kube::CustomResourceExt;
    let plural = policy_plural(kind);
    let mut crd = AuthorizationPolicy::crd();
    crd.metadata.name = Some(format!("{plural}.{POLICY_GROUP}"));
    crd.spec.names.kind = kind.as_str().to_owned();
    crd.spec.names.list_kind = Some(format!("{}List", kind.as_str()));
    crd.spec.names.plural = plural.to_owned();
    crd.spec.names.singular = Some(kind.as_str().to_ascii_lowercase());
    crd.spec.names.categories = Some(vec!["strait".to_owned(), "strait-policy".to_owned()]);
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema.title = Some(kind.as_str().to_owned());
            schema.description = Some(format!(
                "A {} of strait's mesh-wide policy: applied in any linked cluster, it holds in all of them (docs/policy.md).",
                kind.as_str()
            ));
        }
        version.additional_printer_columns = Some(
            serde_json::from_value(serde_json::json!([
                {"name": "Accepted", "type": "string",
                 "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status"},
                {"name": "Origin", "type": "string", "jsonPath": ".status.origin"},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            ]))
            .unwrap_or_default(),
        );
    }
    crd
}

/// Every CRD strait installs, with the file it lives in under `deploy/crds/`.
pub fn all() -> Vec<(String, CustomResourceDefinition)> {
    use kube::CustomResourceExt;
    vec![
        (
            "serviceexports.multicluster.x-k8s.io.yaml",
            spec_optional(ServiceExport::crd()),
        ),
        (
            "serviceimports.multicluster.x-k8s.io.yaml",
            ServiceImport::crd(),
        ),
        ("links.strait.dev.yaml", Link::crd()),
    ]
    .into_iter()
    .map(|(file, crd)| (file.to_owned(), crd))
    .chain(PolicyKind::ALL.into_iter().map(|kind| {
        (
            format!("{}.{POLICY_GROUP}.yaml", policy_plural(kind)),
            policy_crd(kind),
        )
    }))
    .collect()
}

/// The CRD with `spec` optional: the MCS API's ServiceExport has none, and the documents its
/// users write have none (`kubectl apply` refused them while the schema required one).
fn spec_optional(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            if let Some(required) = schema.required.as_mut() {
                required.retain(|field| field != "spec");
            }
            if schema.required.as_ref().is_some_and(Vec::is_empty) {
                schema.required = None;
            }
        }
    }
    crd
}

/// A CRD as the YAML file `kubectl apply -f` takes.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    let header = "# Generated from gateway/src/kubernetes/crd.rs: do not edit by hand\n# (STRAIT_WRITE_CRDS=1 cargo test -p strait-gateway crds rewrites it).\n";
    Ok(format!("{header}{}", serde_saphyr::to_string(crd)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crds_in_deploy_and_the_chart_are_the_ones_the_types_generate() {
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let write = std::env::var_os("STRAIT_WRITE_CRDS").is_some();
        let mut stale = Vec::new();
        // Helm installs the CRDs from the chart's own crds/ folder.
        for dir in [deploy.join("crds"), deploy.join("helm/strait/crds")] {
            for (file, crd) in all() {
                let path = dir.join(&file);
                let wanted = to_yaml(&crd).unwrap();
                if write {
                    std::fs::create_dir_all(&dir).unwrap();
                    std::fs::write(&path, &wanted).unwrap();
                } else if std::fs::read_to_string(&path).ok().as_deref() != Some(wanted.as_str()) {
                    stale.push(path.display().to_string());
                }
            }
        }
        assert!(
            stale.is_empty(),
            "{stale:?} differ from the types: run STRAIT_WRITE_CRDS=1 cargo test -p strait-gateway crds"
        );
    }

    #[test]
    fn a_service_import_reads_the_mcs_shape() {
        let import: ServiceImport = serde_json::from_value(serde_json::json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1",
            "kind": "ServiceImport",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"ips": ["240.240.0.1"], "type": "ClusterSetIP",
                     "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]},
            "status": {"clusters": [{"cluster": "west"}]},
        }))
        .unwrap();
        assert_eq!(import.spec.kind, "ClusterSetIP");
        assert_eq!(import.spec.ports[0].port, 8080);
        assert_eq!(import.status.unwrap().clusters[0].cluster, "west");
    }
}

//! The custom resources a gateway reads and writes: the Multi-Cluster Services API's
//! `ServiceExport` and `ServiceImport` (`multicluster.x-k8s.io/v1alpha1`, the MCS API's own
//! shape, so other MCS tools read them) and strait's `Link` (`strait.dev/v1alpha1`). `deploy/crds/` holds the CRDs these types generate; a
//! test fails when the two differ (`STRAIT_WRITE_CRDS=1` rewrites the files).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
    shortname = "svcim"
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

/// Every CRD strait installs, with the file it lives in under `deploy/crds/`.
pub fn all() -> Vec<(
    &'static str,
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
)> {
    use kube::CustomResourceExt;
    vec![
        (
            "serviceexports.multicluster.x-k8s.io.yaml",
            ServiceExport::crd(),
        ),
        (
            "serviceimports.multicluster.x-k8s.io.yaml",
            ServiceImport::crd(),
        ),
        ("links.strait.dev.yaml", Link::crd()),
    ]
}

/// A CRD as the YAML file `kubectl apply -f` takes.
pub fn to_yaml(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Result<String, serde_saphyr::SerializeError> {
    let header = "# Generated from gateway/src/kubernetes/crd.rs: do not edit by hand\n# (STRAIT_WRITE_CRDS=1 cargo test -p strait-gateway crds rewrites it).\n";
    Ok(format!("{header}{}", serde_saphyr::to_string(crd)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crds_in_deploy_are_the_ones_the_types_generate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
        let write = std::env::var_os("STRAIT_WRITE_CRDS").is_some();
        let mut stale = Vec::new();
        for (file, crd) in all() {
            let path = dir.join(file);
            let wanted = to_yaml(&crd).unwrap();
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &wanted).unwrap();
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(wanted.as_str()) {
                stale.push(file);
            }
        }
        assert!(
            stale.is_empty(),
            "deploy/crds/ differs from the types for {stale:?}: run STRAIT_WRITE_CRDS=1 cargo test -p strait-gateway crds"
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

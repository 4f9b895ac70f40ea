//! EndpointSlices in the two shapes a gateway meets: `discovery.k8s.io/v1` (Kubernetes 1.21 and
//! later) and `v1beta1` (1.20, removed in 1.25). k8s-openapi has no `v1beta1` type, so slices
//! travel as `DynamicObject`s, read here through the fields both versions share (addresses,
//! readiness, hostname, ports); the version is picked by API discovery.

use std::net::IpAddr;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde::Deserialize;

/// The label that ties a slice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The EndpointSlice API a cluster serves.
pub async fn served(client: &kube::Client) -> ApiResource {
    let version = match client.list_api_group_resources("discovery.k8s.io/v1").await {
        Ok(list) if list.resources.iter().any(|r| r.name == "endpointslices") => "v1",
        _ => "v1beta1",
    };
    resource(version)
}

/// The EndpointSlice resource of one API version.
pub fn resource(version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("discovery.k8s.io", version, "EndpointSlice"),
        "endpointslices",
    )
}

/// What a gateway reads of one slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    pub namespace: String,
    /// The Service it belongs to (its `kubernetes.io/service-name` label).
    pub service: String,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// A port of a slice: the Service port's name, and the port the endpoints listen on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SlicePort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub protocol: Option<String>,
}

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    pub ready: bool,
    pub hostname: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    #[serde(default)]
    endpoints: Vec<EndpointBody>,
    #[serde(default)]
    ports: Vec<SlicePort>,
}

#[derive(Deserialize)]
struct EndpointBody {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: Option<Conditions>,
    #[serde(default)]
    hostname: Option<String>,
}

#[derive(Deserialize)]
struct Conditions {
    #[serde(default)]
    ready: Option<bool>,
}

/// Reads a slice of either version; `None` when it belongs to no Service or does not parse.
/// Addresses that are not IPs (an `FQDN` slice) are left out.
pub fn read(object: &DynamicObject) -> Option<Slice> {
    read_labelled(object, SERVICE_NAME_LABEL)
}

/// Reads a slice whose service `label` names (an imported slice's is the MCS label).
pub fn read_labelled(object: &DynamicObject, label: &str) -> Option<Slice> {
    let namespace = object.metadata.namespace.clone()?;
    let service = object.metadata.labels.as_ref()?.get(label)?.clone();
    let body: Body = serde_json::from_value(object.data.clone()).ok()?;
    Some(Slice {
        namespace,
        service,
        ports: body.ports,
        endpoints: body
            .endpoints
            .into_iter()
            .map(|e| SliceEndpoint {
                addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                // An unknown readiness counts as ready, as the API documents.
                ready: e.conditions.and_then(|c| c.ready).unwrap_or(true),
                hostname: e.hostname,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_v1beta1_slice_is_read_with_its_topology_ignored() {
        let slice = read(&object(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1beta1",
            "kind": "EndpointSlice",
            "metadata": {"name": "api-x1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "api"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.1.0.7"], "conditions": {"ready": true},
                 "hostname": "api-0", "topology": {"kubernetes.io/hostname": "node-1"}},
                {"addresses": ["10.1.0.8"], "conditions": {"ready": false}},
                {"addresses": ["10.1.0.9"]},
            ],
            "ports": [{"name": "http", "port": 9090, "protocol": "TCP"}],
        })))
        .unwrap();
        assert_eq!(slice.namespace, "shop");
        assert_eq!(slice.service, "api");
        assert_eq!(slice.ports[0].port, Some(9090));
        assert_eq!(slice.ports[0].name.as_deref(), Some("http"));
        let ready: Vec<bool> = slice.endpoints.iter().map(|e| e.ready).collect();
        assert_eq!(ready, [true, false, true], "no conditions: ready");
        assert_eq!(slice.endpoints[0].hostname.as_deref(), Some("api-0"));
    }

    #[test]
    fn a_v1_slice_is_read_with_its_zone_and_node_ignored() {
        let slice = read(&object(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "api-x2", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "api"}},
            "addressType": "IPv6",
            "endpoints": [{"addresses": ["fd00::7"], "conditions": {"ready": true,
                           "serving": true, "terminating": false},
                           "zone": "us-east-1a", "nodeName": "node-1"}],
            "ports": [{"name": "", "port": 8443}],
        })))
        .unwrap();
        assert_eq!(
            slice.endpoints[0].addresses,
            ["fd00::7".parse::<IpAddr>().unwrap()]
        );
        assert!(slice.endpoints[0].ready);
    }

    #[test]
    fn a_slice_of_no_service_or_of_names_is_left_out() {
        let unlabelled = object(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "x", "namespace": "shop"}, "addressType": "IPv4",
            "endpoints": [], "ports": [],
        }));
        assert_eq!(read(&unlabelled), None);
        let names = read(&object(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "y", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "FQDN", "endpoints": [{"addresses": ["db.example.com"]}], "ports": [],
        })))
        .unwrap();
        assert!(names.endpoints[0].addresses.is_empty());
    }
}

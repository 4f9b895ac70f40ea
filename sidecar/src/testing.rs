//! A small mesh for the crate's unit tests, built in memory as a gateway would stream it, so
//! that planning, routing and the proxy's stages are tested without sockets.

use strait_federation::catalog::ServiceKey;
use strait_federation::identity::{Namespace, ServiceName};
use strait_federation::proto::workload::{
    Backend, CatalogView, EndpointView, PolicyDocument, PortSpec, ServiceView,
};

use crate::directory::Directory;

/// The catalog of cluster `east` (aws eu-west-1), namespace `shop`, with `policies` (YAML
/// documents, their kind and name read from them):
/// - `api` (http 8080): `api-0` here at 127.0.0.1:5000, `api-1` here at 127.0.0.1:5001 but
///   not ready, `api-7` in `west` (the same region) and one in `north` (another cloud);
/// - `api-v2` (http 8080): in `west` only;
/// - `db` (tcp 5432, http 8081): in `west` only;
/// - `cache` (tcp 6379 and 6380): here, at 127.0.0.1:6000.
pub(crate) fn directory(policies: &[&str]) -> Directory {
    let view = CatalogView {
        cluster: "east".into(),
        relay_address: "127.0.0.1:4000".into(),
        version: 1,
        cloud: "aws".into(),
        region: "eu-west-1".into(),
        zone: "a".into(),
        services: vec![
            service(
                "api",
                &[("http", 8080, "http")],
                vec![
                    backend(
                        "east",
                        ("aws", "eu-west-1"),
                        &[
                            ("127.0.0.1:5000", "api-0", true),
                            ("127.0.0.1:5001", "api-1", false),
                        ],
                    ),
                    backend(
                        "west",
                        ("aws", "eu-west-1"),
                        &[("10.0.0.7:5000", "api-7", true)],
                    ),
                    backend("north", ("gcp", "us-east1"), &[("10.1.0.1:5000", "", true)]),
                ],
            ),
            service(
                "api-v2",
                &[("http", 8080, "http")],
                vec![backend(
                    "west",
                    ("aws", "eu-west-1"),
                    &[("10.0.0.8:5000", "", true)],
                )],
            ),
            service(
                "db",
                &[("sql", 5432, "tcp"), ("admin", 8081, "http")],
                vec![backend(
                    "west",
                    ("aws", "eu-west-1"),
                    &[("10.0.0.9:5000", "", true)],
                )],
            ),
            service(
                "cache",
                &[("main", 6379, "tcp"), ("replica", 6380, "tcp")],
                vec![backend(
                    "east",
                    ("aws", "eu-west-1"),
                    &[("127.0.0.1:6000", "", true)],
                )],
            ),
        ],
        policies: policies.iter().map(|yaml| document(yaml)).collect(),
        ..Default::default()
    };
    Directory::from_view(&view, None)
}

/// The key of a service of namespace `shop`.
pub(crate) fn shop(name: &str) -> ServiceKey {
    ServiceKey {
        namespace: Namespace::new("shop").expect("a valid namespace"),
        name: ServiceName::new(name).expect("a valid service name"),
    }
}

fn service(name: &str, ports: &[(&str, u32, &str)], backends: Vec<Backend>) -> ServiceView {
    ServiceView {
        namespace: "shop".into(),
        name: name.into(),
        ports: ports
            .iter()
            .map(|(name, port, protocol)| PortSpec {
                name: (*name).into(),
                port: *port,
                protocol: (*protocol).into(),
            })
            .collect(),
        backends,
    }
}

fn backend(
    cluster: &str,
    (cloud, region): (&str, &str),
    endpoints: &[(&str, &str, bool)],
) -> Backend {
    Backend {
        cluster: cluster.into(),
        endpoints: endpoints
            .iter()
            .map(|(address, hostname, ready)| EndpointView {
                address: (*address).into(),
                hostname: (*hostname).into(),
                ready: *ready,
            })
            .collect(),
        cloud: cloud.into(),
        region: region.into(),
        zone: "a".into(),
    }
}

/// A policy document as the gateway streams it (JSON), from YAML.
fn document(yaml: &str) -> PolicyDocument {
    let value: serde_json::Value = serde_saphyr::from_str(yaml).expect("test documents are YAML");
    let text = |pointer: &str| {
        value
            .pointer(pointer)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    };
    PolicyDocument {
        kind: text("/kind").into(),
        namespace: text("/metadata/namespace").into(),
        name: text("/metadata/name").into(),
        document: value.to_string(),
        stamp: 1,
        origin: "east".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_mesh_has_its_services_and_policies() {
        let directory = directory(&[ROUTE]);
        assert_eq!(directory.policies.refused, 0);
        assert_eq!(directory.policies.routes(&shop("api")).len(), 1);
        for name in ["api", "api-v2", "db", "cache"] {
            assert!(directory.service(&shop(name)).is_some(), "{name}");
        }
    }

    const ROUTE: &str = "apiVersion: policy.strait.dev/v1alpha1
kind: HTTPRoute
metadata: {name: api-split, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  rules:
    - backendRefs: [{name: api-v2}]
";
}

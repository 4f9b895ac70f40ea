//! Names in the mesh: trust domains, cluster names and the SPIFFE identities built from them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a name or identity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} {value:?} is empty or longer than {max} characters")]
    Length {
        what: &'static str,
        value: String,
        max: usize,
    },
    #[error(
        "{what} {value:?} must be lowercase letters, digits and '-', starting with a letter and not ending with '-'"
    )]
    Characters { what: &'static str, value: String },
    #[error("{value:?} is not a strait SPIFFE identity: {reason}")]
    Spiffe { value: String, reason: &'static str },
}

fn check_label(what: &'static str, value: &str, max: usize) -> Result<(), NameError> {
    if value.is_empty() || value.len() > max {
        return Err(NameError::Length {
            what,
            value: value.to_owned(),
            max,
        });
    }
    let bytes = value.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    if !bytes[0].is_ascii_lowercase()
        || bytes[bytes.len() - 1] == b'-'
        || !bytes.iter().all(allowed)
    {
        return Err(NameError::Characters {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// A DNS subdomain: labels joined by dots (Kubernetes service-account names are these).
fn check_subdomain(what: &'static str, value: &str, max: usize) -> Result<(), NameError> {
    if value.is_empty() || value.len() > max {
        return Err(NameError::Length {
            what,
            value: value.to_owned(),
            max,
        });
    }
    for label in value.split('.') {
        // Labels may start with a digit in a subdomain, but may not be empty.
        let bad = || NameError::Characters {
            what,
            value: value.to_owned(),
        };
        if label.is_empty() {
            return Err(bad());
        }
        check_label(what, &format!("a{label}"), 64).map_err(|_| bad())?;
    }
    Ok(())
}

macro_rules! label_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:literal) => {
        label_type!($(#[$doc])* $name, $what, $max, check_label);
    };
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:literal, $check:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Eq, PartialOrd, Ord)]
        pub struct $name(String);

        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.0.hash(state)
            }
        }

        /// Compared inline (see [`crate::text`]): policy decisions compare names per rule.
        impl PartialEq for $name {
            #[inline]
            fn eq(&self, other: &Self) -> bool {
                crate::text::same(&self.0, &other.0)
            }
        }

        impl $name {
            /// Checks and wraps a name.
            pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
                let value = value.into();
                $check($what, &value, $max)?;
                Ok(Self(value))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = String::deserialize(deserializer)?;
                Self::new(value).map_err(serde::de::Error::custom)
            }
        }
    };
}

label_type!(
    /// The name of a cluster (a DNS label: it appears in DNS names and SPIFFE paths).
    ClusterName,
    "cluster name",
    63
);
label_type!(
    /// A Kubernetes-style namespace name.
    Namespace,
    "namespace",
    63
);
label_type!(
    /// A service name (a DNS label).
    ServiceName,
    "service name",
    63
);
label_type!(
    /// A service account, or an operator's name (a DNS subdomain).
    AccountName,
    "account name",
    253,
    check_subdomain
);

/// The trust domain of a mesh, such as `example.mesh`: dot-separated DNS labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Checks and wraps a trust domain.
    pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
        let value = value.into();
        check_subdomain("trust domain", &value, 255)?;
        Ok(Self(value))
    }

    /// The trust domain as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        Self::new(value).map_err(serde::de::Error::custom)
    }
}

/// What a certificate holder may do in the mesh; verifiers accept a peer only in its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An application's sidecar.
    Workload,
    /// A cluster's east-west gateway.
    Gateway,
    /// A person or tool driving a gateway's operator API.
    Operator,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Workload => "workload",
            Role::Gateway => "gateway",
            Role::Operator => "operator",
        })
    }
}

/// A strait SPIFFE identity. Every identity belongs to one cluster; the cluster's issuer may
/// only sign identities of its own cluster (checked by the verifiers).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SpiffeId {
    /// `spiffe://<td>/cluster/<c>/ns/<ns>/sa/<sa>`
    Workload {
        trust_domain: TrustDomain,
        cluster: ClusterName,
        namespace: Namespace,
        service_account: AccountName,
    },
    /// `spiffe://<td>/cluster/<c>/gateway`
    Gateway {
        trust_domain: TrustDomain,
        cluster: ClusterName,
    },
    /// `spiffe://<td>/cluster/<c>/operator/<name>`
    Operator {
        trust_domain: TrustDomain,
        cluster: ClusterName,
        name: AccountName,
    },
}

impl SpiffeId {
    /// The identity of a cluster's gateway.
    pub fn gateway(trust_domain: &TrustDomain, cluster: &ClusterName) -> Self {
        SpiffeId::Gateway {
            trust_domain: trust_domain.clone(),
            cluster: cluster.clone(),
        }
    }

    /// The role this identity plays.
    pub fn role(&self) -> Role {
        match self {
            SpiffeId::Workload { .. } => Role::Workload,
            SpiffeId::Gateway { .. } => Role::Gateway,
            SpiffeId::Operator { .. } => Role::Operator,
        }
    }

    /// The trust domain the identity lives in.
    pub fn trust_domain(&self) -> &TrustDomain {
        match self {
            SpiffeId::Workload { trust_domain, .. }
            | SpiffeId::Gateway { trust_domain, .. }
            | SpiffeId::Operator { trust_domain, .. } => trust_domain,
        }
    }

    /// The cluster the identity belongs to.
    pub fn cluster(&self) -> &ClusterName {
        match self {
            SpiffeId::Workload { cluster, .. }
            | SpiffeId::Gateway { cluster, .. }
            | SpiffeId::Operator { cluster, .. } => cluster,
        }
    }

    /// The URI of a cluster's issuer (put in its intermediate certificate's SAN).
    pub fn cluster_uri(trust_domain: &TrustDomain, cluster: &ClusterName) -> String {
        format!("spiffe://{trust_domain}/cluster/{cluster}")
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpiffeId::Workload {
                trust_domain,
                cluster,
                namespace,
                service_account,
            } => write!(
                f,
                "spiffe://{trust_domain}/cluster/{cluster}/ns/{namespace}/sa/{service_account}"
            ),
            SpiffeId::Gateway {
                trust_domain,
                cluster,
            } => write!(f, "spiffe://{trust_domain}/cluster/{cluster}/gateway"),
            SpiffeId::Operator {
                trust_domain,
                cluster,
                name,
            } => write!(
                f,
                "spiffe://{trust_domain}/cluster/{cluster}/operator/{name}"
            ),
        }
    }
}

/// Written as its URI.
impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Read from its URI, checked.
impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for SpiffeId {
    type Err = NameError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let refuse = |reason| NameError::Spiffe {
            value: value.to_owned(),
            reason,
        };
        let rest = value
            .strip_prefix("spiffe://")
            .ok_or_else(|| refuse("it does not start with spiffe://"))?;
        let (domain, path) = rest
            .split_once('/')
            .ok_or_else(|| refuse("it has no path"))?;
        let trust_domain = TrustDomain::new(domain).map_err(|_| refuse("bad trust domain"))?;
        let parts: Vec<&str> = path.split('/').collect();
        let cluster_of = |s: &str| ClusterName::new(s).map_err(|_| refuse("bad cluster name"));
        match parts.as_slice() {
            ["cluster", cluster, "gateway"] => Ok(SpiffeId::Gateway {
                trust_domain,
                cluster: cluster_of(cluster)?,
            }),
            ["cluster", cluster, "operator", name] => Ok(SpiffeId::Operator {
                trust_domain,
                cluster: cluster_of(cluster)?,
                name: AccountName::new(*name).map_err(|_| refuse("bad operator name"))?,
            }),
            ["cluster", cluster, "ns", namespace, "sa", account] => Ok(SpiffeId::Workload {
                trust_domain,
                cluster: cluster_of(cluster)?,
                namespace: Namespace::new(*namespace).map_err(|_| refuse("bad namespace"))?,
                service_account: AccountName::new(*account)
                    .map_err(|_| refuse("bad service account"))?,
            }),
            _ => Err(refuse(
                "the path is none of cluster/<c>/gateway, cluster/<c>/operator/<name>, cluster/<c>/ns/<ns>/sa/<sa>",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_identity_form_round_trips_through_text() {
        for text in [
            "spiffe://example.mesh/cluster/west/gateway",
            "spiffe://example.mesh/cluster/west/operator/admin",
            "spiffe://example.mesh/cluster/east/ns/shop/sa/api",
        ] {
            let id: SpiffeId = text.parse().unwrap();
            assert_eq!(id.to_string(), text);
        }
    }

    #[test]
    fn roles_follow_the_path() {
        let gateway: SpiffeId = "spiffe://td/cluster/west/gateway".parse().unwrap();
        let workload: SpiffeId = "spiffe://td/cluster/west/ns/a/sa/b".parse().unwrap();
        assert_eq!(gateway.role(), Role::Gateway);
        assert_eq!(workload.role(), Role::Workload);
        assert_eq!(workload.cluster().as_str(), "west");
    }

    #[test]
    fn malformed_identities_are_refused_with_a_reason() {
        for text in [
            "https://td/cluster/west/gateway",
            "spiffe://td",
            "spiffe://td/cluster/West/gateway",
            "spiffe://td/cluster/west/gateway/extra",
            "spiffe://td/cluster/west/ns/shop",
            "spiffe://bad_domain/cluster/west/gateway",
        ] {
            let err = text.parse::<SpiffeId>().unwrap_err();
            assert!(matches!(err, NameError::Spiffe { .. }), "{text}: {err}");
        }
    }

    #[test]
    fn service_accounts_may_be_dns_subdomains() {
        let id: SpiffeId = "spiffe://td/cluster/west/ns/shop/sa/api.v2"
            .parse()
            .unwrap();
        assert_eq!(id.to_string(), "spiffe://td/cluster/west/ns/shop/sa/api.v2");
        assert!(AccountName::new("a..b").is_err());
        assert!(AccountName::new(".a").is_err());
    }

    #[test]
    fn cluster_names_must_be_dns_labels() {
        assert!(ClusterName::new("us-east-1").is_ok());
        assert!(ClusterName::new("").is_err());
        assert!(ClusterName::new("1west").is_err());
        assert!(ClusterName::new("west-").is_err());
        assert!(ClusterName::new("we.st").is_err());
        assert!(ClusterName::new("a".repeat(64)).is_err());
    }
}

//! What a sidecar is told: its bootstrap document (which gateway, which trust, which token),
//! the service it fronts and the app ports behind it, and where it listens.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strait_federation::catalog::{Port, Protocol};
use strait_federation::identity::{ClusterName, ServiceName, TrustDomain};

use crate::SidecarError;

/// The kind of a bootstrap document.
pub const BOOTSTRAP_KIND: &str = "SidecarBootstrap";

/// What a new sidecar needs to join its cluster (`strait sidecar token` writes it): the
/// gateway's API address, the cluster and trust domain, the trust bundle, and a token that
/// grants one workload identity. Holds no private key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bootstrap {
    pub api_version: String,
    pub kind: String,
    /// The gateway's API address (host:port).
    pub gateway: String,
    pub cluster: ClusterName,
    pub trust_domain: TrustDomain,
    /// The identity the token grants (informational).
    pub identity: String,
    /// The trust bundle, PEM.
    pub bundle: String,
    pub token: String,
}

impl Bootstrap {
    /// Reads a bootstrap document.
    pub fn load(path: &Path) -> Result<Self, SidecarError> {
        let bad = |message: String| SidecarError::Config {
            what: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let bootstrap: Bootstrap = serde_saphyr::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if bootstrap.kind != BOOTSTRAP_KIND {
            return Err(bad(format!(
                "kind is {:?}, expected {BOOTSTRAP_KIND}",
                bootstrap.kind
            )));
        }
        Ok(bootstrap)
    }
}

/// Why an app port (`--port`) or an upstream (`--upstream`) does not parse.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("expected PORT/PROTOCOL=ADDRESS, e.g. 80/http=127.0.0.1:8080")]
    AppPortForm,
    #[error("port {0:?}: expected 1..65535")]
    Port(String),
    #[error("protocol {0:?}: expected http, http2, grpc or tcp")]
    Protocol(String),
    #[error("address {text:?}: {error}")]
    Address {
        text: String,
        #[source]
        error: std::net::AddrParseError,
    },
    #[error("expected NAME:PORT=LISTEN, e.g. db.shop:5432=127.0.0.1:15432")]
    UpstreamForm,
    #[error("{0:?}: the port is missing (NAME:PORT)")]
    NoPort(String),
    #[error("expected NAMESPACE or NAMESPACE/SERVICE: {0}")]
    Watched(String),
}

/// Parses a socket address, naming it when it does not parse.
fn address(text: &str) -> Result<SocketAddr, ParseError> {
    text.parse().map_err(|error| ParseError::Address {
        text: text.to_owned(),
        error,
    })
}

/// One port of the app behind the sidecar.
#[derive(Debug, Clone, PartialEq)]
pub struct AppPort {
    /// The service port (what callers name).
    pub port: Port,
    /// Where the app listens (localhost).
    pub target: SocketAddr,
}

impl AppPort {
    /// Parses `PORT/PROTOCOL=ADDRESS` (`80/http=127.0.0.1:8080`); the port's name is its
    /// protocol unless given as `NAME:PORT/PROTOCOL=ADDRESS`.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let (port, target) = text.split_once('=').ok_or(ParseError::AppPortForm)?;
        let (port, protocol) = port.split_once('/').unwrap_or((port, "tcp"));
        let (name, port) = match port.split_once(':') {
            Some((name, port)) => (Some(name), port),
            None => (None, port),
        };
        let number: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| ParseError::Port(port.to_owned()))?;
        let protocol =
            Protocol::parse(protocol).ok_or_else(|| ParseError::Protocol(protocol.to_owned()))?;
        let target = address(target)?;
        Ok(Self {
            port: Port {
                name: name.unwrap_or(protocol.as_str()).to_owned(),
                port: number,
                protocol,
            },
            target,
        })
    }
}

/// The service a sidecar fronts and registers (universal mode).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: ServiceName,
    pub ports: Vec<AppPort>,
    /// Whether linked clusters may reach it.
    pub export: bool,
    /// The pod or host name of this endpoint.
    pub hostname: Option<String>,
}

/// A local TCP listener that carries opaque TCP to one mesh name (universal mode).
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// The name as callers would write it (`db.shop:5432`, `west.db.shop.svc.clusterset.local:5432`).
    pub name: String,
    pub listen: SocketAddr,
}

impl Upstream {
    /// Parses `NAME:PORT=LISTEN` (`db.shop:5432=127.0.0.1:15432`).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let (name, listen) = text.split_once('=').ok_or(ParseError::UpstreamForm)?;
        if !name.contains(':') {
            return Err(ParseError::NoPort(name.to_owned()));
        }
        Ok(Self {
            name: name.to_owned(),
            listen: address(listen)?,
        })
    }
}

/// What the token of a sidecar's bootstrap proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A bootstrap token from `strait sidecar token`, signed by the gateway.
    Bootstrap,
    /// A projected Kubernetes service-account token (audience `strait`), which the gateway
    /// checks with the API server (Kubernetes mode).
    ServiceAccount,
}

/// Everything a sidecar runs with.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    pub bootstrap: Bootstrap,
    /// What `bootstrap.token` is.
    pub token_kind: TokenKind,
    pub service: Option<ServiceConfig>,
    /// Kubernetes mode: the app's ports that other sidecars call, served on the inbound port
    /// like a service's ports but registered nowhere (the pod's EndpointSlices say where it is).
    pub app_ports: Vec<AppPort>,
    /// Kubernetes mode: the app's own probes, by `container/kind`, that the admin server runs
    /// for the kubelet at `/app-health/<container>/<kind>`.
    pub app_probes: std::collections::BTreeMap<String, strait_io::admin::AppProbe>,
    /// mTLS from other sidecars (through gateways too).
    pub inbound_addr: SocketAddr,
    /// The address registered for this endpoint, when not the bound inbound address.
    pub advertise_addr: Option<SocketAddr>,
    /// The app's HTTP proxy port (`http_proxy`), if any.
    pub proxy_addr: Option<SocketAddr>,
    /// Health, readiness and metrics, if any.
    pub admin_addr: Option<SocketAddr>,
    pub upstreams: Vec<Upstream>,
    /// Where iptables redirects the app's outbound connections, if anywhere.
    pub transparent_addr: Option<SocketAddr>,
    /// How long a request may wait for its response headers.
    pub request_timeout: Duration,
    /// How long connecting to an endpoint (or through the gateways) may take.
    pub connect_timeout: Duration,
    /// The workload this sidecar belongs to (`deploy/web`), for golden metrics by workload.
    pub workload: Option<String>,
    /// One JSON line per request and TCP flow on standard output, whatever the gateway says.
    pub access_log: bool,
    /// What callers can make the sidecar hold.
    pub limits: crate::limits::LimitsConfig,
    /// The services the workload calls, declared (`--watch`): the gateway sends only those.
    /// Empty: every service.
    pub watch: Vec<Watched>,
}

/// A part of the catalog a sidecar asks for: a namespace's services, or one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    Namespace(strait_federation::identity::Namespace),
    Service(strait_federation::catalog::ServiceKey),
}

impl std::fmt::Display for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Watched::Namespace(namespace) => write!(f, "{namespace}"),
            Watched::Service(key) => write!(f, "{}/{}", key.namespace, key.name),
        }
    }
}

impl Watched {
    /// Parses `NAMESPACE` or `NAMESPACE/SERVICE`.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        use strait_federation::identity::{Namespace, ServiceName};
        let bad = |e: &dyn std::fmt::Display| ParseError::Watched(e.to_string());
        match text.split_once('/') {
            None => Ok(Self::Namespace(Namespace::new(text).map_err(|e| bad(&e))?)),
            Some((namespace, name)) => Ok(Self::Service(strait_federation::catalog::ServiceKey {
                namespace: Namespace::new(namespace).map_err(|e| bad(&e))?,
                name: ServiceName::new(name).map_err(|e| bad(&e))?,
            })),
        }
    }
}

impl SidecarConfig {
    /// The app's ports that the inbound port serves: the registered service's, then the
    /// Kubernetes-mode app ports.
    pub fn served_ports(&self) -> impl Iterator<Item = &AppPort> {
        self.service
            .iter()
            .flat_map(|s| s.ports.iter())
            .chain(&self.app_ports)
    }

    /// A configuration with the defaults: listeners on loopback, ports chosen at start.
    pub fn new(bootstrap: Bootstrap) -> Self {
        Self {
            bootstrap,
            token_kind: TokenKind::Bootstrap,
            service: None,
            app_ports: Vec::new(),
            app_probes: std::collections::BTreeMap::new(),
            inbound_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise_addr: None,
            proxy_addr: None,
            admin_addr: None,
            upstreams: Vec::new(),
            transparent_addr: None,
            request_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(3),
            workload: None,
            access_log: false,
            limits: crate::limits::LimitsConfig::default(),
            watch: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ports_and_upstreams_parse_and_bad_ones_say_why() {
        let port = AppPort::parse("80/http=127.0.0.1:8080").unwrap();
        assert_eq!(
            (port.port.name.as_str(), port.port.port, port.port.protocol),
            ("http", 80, Protocol::Http)
        );
        let grpc = AppPort::parse("rpc:9090/grpc=127.0.0.1:9091").unwrap();
        assert_eq!(grpc.port.name, "rpc");
        let upstream = Upstream::parse("db.shop:5432=127.0.0.1:15432").unwrap();
        assert_eq!(upstream.name, "db.shop:5432");
        let app_port = |text| AppPort::parse(text).unwrap_err().to_string();
        assert_eq!(
            app_port("80/ftp=127.0.0.1:1"),
            r#"protocol "ftp": expected http, http2, grpc or tcp"#
        );
        assert_eq!(
            app_port("0/http=127.0.0.1:1"),
            r#"port "0": expected 1..65535"#
        );
        assert_eq!(
            app_port("80/http"),
            "expected PORT/PROTOCOL=ADDRESS, e.g. 80/http=127.0.0.1:8080"
        );
        assert_eq!(
            app_port("80/http=localhost:80"),
            r#"address "localhost:80": invalid socket address syntax"#
        );
        let upstream = |text| Upstream::parse(text).unwrap_err().to_string();
        assert_eq!(
            upstream("db.shop=127.0.0.1:1"),
            r#""db.shop": the port is missing (NAME:PORT)"#
        );
        assert_eq!(
            upstream("db.shop:5432"),
            "expected NAME:PORT=LISTEN, e.g. db.shop:5432=127.0.0.1:15432"
        );
    }
}

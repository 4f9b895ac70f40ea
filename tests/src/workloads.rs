//! The workloads whole-mesh tests share: a linked pair of gateways, service endpoints (sample
//! apps behind their sidecar), client sidecars, and requests through a client's proxy port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use serde_json::Value;

use crate::{Gateway, Mesh, Process, http_get_host, wait_for};

/// Two gateways, east linked to west, with `workloads` settings when given.
pub fn linked_pair(workloads: Option<&str>) -> Result<(Mesh, Gateway, Gateway)> {
    let mesh = Mesh::new()?;
    let mut west = mesh.gateway("west", None)?;
    let mut east = mesh.gateway("east", None)?;
    if let Some(workloads) = workloads {
        west.set_workloads(workloads)?;
        east.set_workloads(workloads)?;
    }
    west.start(&mesh)?;
    east.start(&mesh)?;
    mesh.link("east", "west")?;
    wait_connected(&mesh, "east", "west")?;
    Ok((mesh, east, west))
}

/// Waits (10 s at most) until `a` and `b` each say their link with the other is connected.
pub fn wait_connected(mesh: &Mesh, a: &str, b: &str) -> Result<()> {
    for (cluster, peer) in [(a, b), (b, a)] {
        wait_for(
            Duration::from_secs(10),
            &format!("{cluster} connected to {peer}"),
            || Ok((mesh.link_state(cluster, peer)? == "connected").then_some(())),
        )?;
    }
    Ok(())
}

/// A service endpoint: sample apps behind a sidecar. `ports` are (app kind, port, protocol);
/// one app process per kind serves every port of that kind.
pub struct Endpoint {
    pub apps: Vec<Process>,
    pub sidecar: Process,
}

/// Starts an endpoint of shop/`service` in `cluster`: its sample apps, then its sidecar.
pub fn endpoint(
    mesh: &Mesh,
    cluster: &str,
    service: &str,
    pod: &str,
    ports: &[(&str, u16, &str)],
) -> Result<Endpoint> {
    endpoint_with(mesh, cluster, service, pod, ports, &[])
}

/// Starts an endpoint whose apps get `app_args` too (`--broken 503`, say).
pub fn endpoint_with(
    mesh: &Mesh,
    cluster: &str,
    service: &str,
    pod: &str,
    ports: &[(&str, u16, &str)],
    app_args: &[&str],
) -> Result<Endpoint> {
    let mut apps: Vec<(String, Process)> = Vec::new();
    let mut args = vec![
        "--service".to_owned(),
        service.to_owned(),
        "--export".into(),
        "--hostname".into(),
        pod.to_owned(),
    ];
    for (kind, port, protocol) in ports {
        if !apps.iter().any(|(k, _)| k == kind) {
            let app = mesh.app_with(
                kind,
                cluster,
                &format!("shop/{service}"),
                &format!("{pod}-{kind}"),
                app_args,
            )?;
            apps.push((kind.to_string(), app));
        }
        let app = &apps
            .iter()
            .find(|(k, _)| k == kind)
            .ok_or_else(|| anyhow!("app"))?
            .1;
        args.push("--port".into());
        args.push(format!("{port}/{protocol}={}", app.addr("address")?));
    }
    let sidecar = mesh.sidecar(cluster, "shop", service, pod, &args)?;
    Ok(Endpoint {
        apps: apps.into_iter().map(|(_, p)| p).collect(),
        sidecar,
    })
}

/// An endpoint of shop/api: the HTTP sample app on port 8080 behind its sidecar.
pub fn api(mesh: &Mesh, cluster: &str, pod: &str) -> Result<Endpoint> {
    endpoint(mesh, cluster, "api", pod, &[("http", 8080, "http")])
}

/// A client sidecar (shop/web) with an HTTP proxy port and the given upstream listeners.
pub fn client(mesh: &Mesh, cluster: &str, upstreams: &[&str]) -> Result<Process> {
    let mut args = vec!["--proxy-addr".to_owned(), "127.0.0.1:0".into()];
    for upstream in upstreams {
        args.push("--upstream".into());
        args.push(format!("{upstream}=127.0.0.1:0"));
    }
    mesh.sidecar(cluster, "shop", "web", &format!("web-{cluster}"), &args)
}

/// GET / of `host` through a proxy; the JSON the sample app answered.
pub fn get_json(proxy: SocketAddr, host: &str) -> Result<Value> {
    let (status, body) = http_get_host(proxy, host, "/")?;
    ensure!(status == 200, "{host}: status {status}: {body}");
    serde_json::from_str(&body).with_context(|| format!("{host}: {body}"))
}

/// Waits until `host` through `proxy` is served by `cluster`.
pub fn wait_route(proxy: SocketAddr, host: &str, cluster: &str) -> Result<()> {
    wait_for(
        Duration::from_secs(20),
        &format!("{host} served by {cluster}"),
        || {
            Ok(get_json(proxy, host)
                .ok()
                .filter(|v| v["cluster"] == cluster)
                .map(|_| ()))
        },
    )
}

/// An answer: status, response headers (lower-case names) and body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("{}: {}", self.status, self.body))
    }

    /// A response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// GET `path` at `host` through `proxy` with extra request headers (HTTP/1.0).
pub fn get(proxy: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&proxy, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut head = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers in {response:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// A workload certificate from a cluster's gateway, got as a sidecar gets its first one (a
/// bootstrap token, then `Certify`), and what dials the gateway's workload API with it: for
/// tests and benchmarks that speak the API without a sidecar.
pub struct WorkloadCredentials {
    bootstrap: strait_sidecar::config::Bootstrap,
    trust: strait_federation::tls::TrustStore,
    certs: strait_federation::tls::CertStore,
}

impl WorkloadCredentials {
    /// Certifies `namespace/account` at `cluster`'s gateway.
    pub async fn certify(
        mesh: &Mesh,
        cluster: &str,
        namespace: &str,
        account: &str,
    ) -> Result<Self> {
        let document = mesh.bootstrap(cluster, namespace, account)?;
        let bootstrap: strait_sidecar::config::Bootstrap = serde_saphyr::from_str(&document)?;
        let bundle = strait_federation::pki::TrustBundle::from_pem(
            bootstrap.trust_domain.clone(),
            &bootstrap.bundle,
            std::path::Path::new("bootstrap"),
        )?;
        let trust = strait_federation::tls::TrustStore::new(bundle)?;
        let anonymous = strait_sidecar::control::channel(&bootstrap, &trust, None).await?;
        let certified = strait_sidecar::control::certify(
            anonymous,
            &bootstrap.token,
            strait_sidecar::config::TokenKind::Bootstrap,
        )
        .await?;
        let certs = strait_federation::tls::CertStore::new(&certified.credential)?;
        Ok(Self {
            bootstrap,
            trust,
            certs,
        })
    }

    /// A new connection to the gateway's API presenting the certificate (dialled at its first
    /// call).
    pub async fn channel(&self) -> Result<tonic::transport::Channel> {
        Ok(
            strait_sidecar::control::channel(&self.bootstrap, &self.trust, Some(&self.certs))
                .await?,
        )
    }
}

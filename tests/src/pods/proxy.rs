//! The kube-proxy stand-in: each Service's ClusterIP and port DNATed, in the world's iptables,
//! to the ready endpoints of its EndpointSlices (chosen at random per connection), and the
//! `kubernetes` Service to the API server. Rules are rewritten whole, atomically, a moment after
//! any Service or EndpointSlice changes.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

use super::{NodeSpec, run};

fn chain(spec: &NodeSpec) -> String {
    format!("STRAIT-SVC-{}", spec.subnet)
}

/// Creates the node's chain, jumped to for traffic from pods and from the world itself, and
/// masquerades DNATed traffic (so replies of a pod on the same bridge come back through the
/// NAT).
pub(super) fn install(spec: &NodeSpec) -> Result<()> {
    let chain = chain(spec);
    run("iptables", &["-t", "nat", "-N", &chain])?;
    for hook in ["PREROUTING", "OUTPUT"] {
        run("iptables", &["-t", "nat", "-A", hook, "-j", &chain])?;
    }
    let masquerade = [
        "POSTROUTING",
        "-m",
        "conntrack",
        "--ctstate",
        "DNAT",
        "-j",
        "MASQUERADE",
    ];
    let mut check = vec!["-t", "nat", "-C"];
    check.extend(masquerade);
    if run("iptables", &check).is_err() {
        let mut add = vec!["-t", "nat", "-A"];
        add.extend(masquerade);
        run("iptables", &add)?;
    }
    apply(spec, &[])
}

/// Removes the node's chain.
pub(super) fn uninstall(spec: &NodeSpec) {
    let chain = chain(spec);
    for hook in ["PREROUTING", "OUTPUT"] {
        let _ = run("iptables", &["-t", "nat", "-D", hook, "-j", &chain]);
    }
    let _ = run("iptables", &["-t", "nat", "-F", &chain]);
    let _ = run("iptables", &["-t", "nat", "-X", &chain]);
}

/// One Service port: where it is, and the endpoints (address, port) it goes to.
struct Route {
    address: String,
    protocol: String,
    port: i32,
    endpoints: Vec<(String, i32)>,
}

/// Writes the chain: the API server's rule, then each route's.
fn apply(spec: &NodeSpec, routes: &[Route]) -> Result<()> {
    let chain = chain(spec);
    let mut rules = format!("*nat\n:{chain} - [0:0]\n");
    rules.push_str(&format!(
        "-A {chain} -d {}/32 -p tcp --dport 443 -j DNAT --to-destination {}:{}\n",
        spec.api_service_ip(),
        spec.bridge_ip(),
        spec.api_port
    ));
    for route in routes {
        let count = route.endpoints.len();
        for (i, (address, port)) in route.endpoints.iter().enumerate() {
            let chance = if i + 1 < count {
                format!(
                    "-m statistic --mode random --probability {:.5} ",
                    1.0 / (count - i) as f64
                )
            } else {
                String::new()
            };
            rules.push_str(&format!(
                "-A {chain} -d {}/32 -p {} --dport {} {chance}-j DNAT --to-destination {address}:{port}\n",
                route.address,
                route.protocol.to_lowercase(),
                route.port
            ));
        }
    }
    rules.push_str("COMMIT\n");
    let mut child = Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running iptables-restore")?;
    child
        .stdin
        .take()
        .context("iptables-restore's input")?
        .write_all(rules.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "iptables-restore: {}\n{rules}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The routes of these Services and slices.
fn routes(
    services: &BTreeMap<String, Service>,
    slices: &BTreeMap<String, DynamicObject>,
) -> Vec<Route> {
    let mut routes = Vec::new();
    for service in services.values() {
        let Some(spec) = &service.spec else { continue };
        let Some(address) = spec
            .cluster_ip
            .clone()
            .filter(|ip| ip != "None" && !ip.is_empty())
        else {
            continue;
        };
        let namespace = service.metadata.namespace.clone().unwrap_or_default();
        let name = service.metadata.name.clone().unwrap_or_default();
        let owned: Vec<&DynamicObject> = slices
            .values()
            .filter(|slice| {
                slice.metadata.namespace.as_deref() == Some(namespace.as_str())
                    && slice
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/service-name"))
                        == Some(&name)
            })
            .collect();
        for port in spec.ports.iter().flatten() {
            let port_name = port.name.clone().unwrap_or_default();
            let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
            let mut endpoints = Vec::new();
            for slice in &owned {
                let target = slice.data["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| {
                        p["name"].as_str().unwrap_or_default() == port_name
                            && p["protocol"].as_str().unwrap_or("TCP") == protocol
                    })
                    .and_then(|p| p["port"].as_i64());
                let Some(target) = target else { continue };
                for endpoint in slice.data["endpoints"].as_array().into_iter().flatten() {
                    if endpoint["conditions"]["ready"] == false {
                        continue;
                    }
                    for address in endpoint["addresses"].as_array().into_iter().flatten() {
                        if let Some(address) = address.as_str() {
                            endpoints.push((address.to_owned(), target as i32));
                        }
                    }
                }
            }
            if !endpoints.is_empty() {
                routes.push(Route {
                    address: address.clone(),
                    protocol,
                    port: port.port,
                    endpoints,
                });
            }
        }
    }
    routes
}

fn key(meta: &kube::api::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default()
    )
}

/// Follows Services and EndpointSlices and keeps the rules right until stopped.
pub(super) async fn serve(client: Client, spec: Arc<NodeSpec>, stop: CancellationToken) {
    let slice_resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "discovery.k8s.io",
        "v1beta1",
        "EndpointSlice",
    ));
    let mut service_events = watcher::watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .boxed();
    let mut slice_events = watcher::watcher(
        Api::<DynamicObject>::all_with(client, &slice_resource),
        watcher::Config::default(),
    )
    .boxed();
    let mut services = BTreeMap::new();
    let mut slices = BTreeMap::new();
    let mut dirty = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            Some(event) = service_events.next() => {
                dirty = true;
                match event {
                    Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                        services.insert(key(&s.metadata), s);
                    }
                    Ok(watcher::Event::Delete(s)) => {
                        services.remove(&key(&s.metadata));
                    }
                    Ok(watcher::Event::Init) => services.clear(),
                    Ok(watcher::Event::InitDone) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
                }
            }
            Some(event) = slice_events.next() => {
                dirty = true;
                match event {
                    Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                        slices.insert(key(&s.metadata), s);
                    }
                    Ok(watcher::Event::Delete(s)) => {
                        slices.remove(&key(&s.metadata));
                    }
                    Ok(watcher::Event::Init) => slices.clear(),
                    Ok(watcher::Event::InitDone) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
                }
            }
            _ = tick.tick() => {
                if dirty {
                    dirty = false;
                    if let Err(e) = apply(&spec, &routes(&services, &slices)) {
                        eprintln!("test kube-proxy {}: {e:#}", spec.cluster);
                    }
                }
            }
        }
    }
}

//! Sidecars' views of the catalog, end to end: after the first whole view a sidecar gets only
//! deltas, and one that declares its services (`--watch`) holds only those (and its own
//! namespace's).

use std::time::Duration;

use anyhow::{Result, ensure};
use strait_tests::workloads::{api, client, endpoint, linked_pair, wait_route};
use strait_tests::{Process, http_get, http_get_host, metric, wait_for};

fn sidecar_metric(sidecar: &Process, name: &str, labels: &[&str]) -> Result<f64> {
    let (_, text) = http_get(sidecar.addr("admin")?, "/metrics")?;
    Ok(metric(&text, name, labels).unwrap_or(0.0))
}

#[test]
fn sidecars_follow_changes_by_deltas_and_one_that_declares_its_services_holds_only_those()
-> Result<()> {
    let (mesh, _east_gateway, _west_gateway) = linked_pair(None)?;
    let _api_east = api(&mesh, "east", "api-east-0")?;
    let _api_west = api(&mesh, "west", "api-west-0")?;
    let _orders = endpoint(
        &mesh,
        "west",
        "orders",
        "orders-west-0",
        &[("http", 8080, "http")],
    )?;
    let whole = client(&mesh, "east", &[])?;
    // In a namespace of its own, which has no service: it then holds exactly what it declared.
    let declared = mesh.sidecar(
        "east",
        "front",
        "web",
        "declared-east",
        &[
            "--proxy-addr".into(),
            "127.0.0.1:0".into(),
            "--watch".into(),
            "shop/api".into(),
        ],
    )?;
    let (whole_proxy, declared_proxy) = (whole.addr("proxy")?, declared.addr("proxy")?);
    for proxy in [whole_proxy, declared_proxy] {
        wait_route(proxy, "west.api.shop.svc.clusterset.local", "west")?;
    }
    wait_route(whole_proxy, "orders.shop.svc.clusterset.local", "west")?;

    // The declared sidecar knows api alone, and says why another name goes nowhere.
    let (status, body) = http_get_host(declared_proxy, "orders.shop.svc.clusterset.local", "/")?;
    ensure!(
        status == 404,
        "orders through the declared sidecar: {status} {body}"
    );
    ensure!(
        body.contains("not among the services this sidecar watches (--watch shop/api)"),
        "{body}"
    );
    ensure!(sidecar_metric(&declared, "strait_view_services", &[])? == 1.0);
    ensure!(sidecar_metric(&whole, "strait_view_services", &[])? >= 2.0);

    // A new endpoint of api in east, then one of orders in west: both sidecars hear of api's
    // by a delta; the declared one never of orders.
    let whole_deltas = sidecar_metric(&whole, "strait_view_updates_total", &["kind=\"delta\""])?;
    let declared_bytes = sidecar_metric(&declared, "strait_view_bytes_total", &[])?;
    let _api_east_1 = api(&mesh, "east", "api-east-1")?;
    let _orders_1 = endpoint(
        &mesh,
        "west",
        "orders",
        "orders-west-1",
        &[("http", 8080, "http")],
    )?;
    wait_for(Duration::from_secs(10), "a delta at each sidecar", || {
        let whole_now = sidecar_metric(&whole, "strait_view_updates_total", &["kind=\"delta\""])?;
        let declared_now = sidecar_metric(&declared, "strait_view_bytes_total", &[])?;
        Ok((whole_now > whole_deltas && declared_now > declared_bytes).then_some(()))
    })?;
    for sidecar in [&whole, &declared] {
        // One whole view each since they started: the rest were deltas.
        let wholes = sidecar_metric(sidecar, "strait_view_updates_total", &["kind=\"whole\""])?;
        ensure!(wholes == 1.0, "{} got {wholes} whole views", sidecar.name);
    }
    ensure!(sidecar_metric(&declared, "strait_view_services", &[])? == 1.0);
    let (status, _) = http_get_host(declared_proxy, "orders.shop.svc.clusterset.local", "/")?;
    ensure!(
        status == 404,
        "orders through the declared sidecar: {status}"
    );
    Ok(())
}

/// A sidecar of an older strait takes no deltas: every message must be a whole view, in one
/// message even past the size at which views go in parts (it would take a part for the whole).
#[test]
fn a_sidecar_that_takes_no_deltas_gets_each_view_whole_in_one_message() -> Result<()> {
    use strait_federation::proto::workload::WatchRequest;
    use strait_federation::proto::workload::workload_client::WorkloadClient;
    use strait_tests::workloads::WorkloadCredentials;

    let mesh = strait_tests::Mesh::new()?;
    let _east = mesh.start("east", None)?;
    let services: Vec<String> = (0..300)
        .map(|i| strait_tests::service("shop", &format!("svc-{i}"), true, 8080))
        .collect();
    mesh.apply("east", "many.yaml", &services.join("---\n"))
        .success()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let seen = runtime.block_on(async {
        strait_federation::tls::install_default_provider();
        let credentials = WorkloadCredentials::certify(&mesh, "east", "shop", "old").await?;
        let channel = credentials.channel().await?;
        let mut stream = WorkloadClient::new(channel)
            .watch(WatchRequest::default())
            .await?
            .into_inner();
        // Every message whole and alone, until one holds the 300 services (the first may come
        // before the apply reached the view), then until one holds the change.
        let mut seen = Vec::new();
        let mut changed = false;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await??
                .ok_or_else(|| anyhow::anyhow!("the stream ended"))?;
            ensure!(
                message.delta_from == 0 && !message.continued,
                "message {}: a delta from {} (continued {})",
                seen.len() + 1,
                message.delta_from,
                message.continued
            );
            let moved = message
                .services
                .iter()
                .any(|s| s.name == "svc-0" && s.ports.iter().any(|p| p.port == 9090));
            seen.push(message.services.len());
            if moved {
                ensure!(message.services.len() == 300, "{seen:?}");
                return anyhow::Ok(seen);
            }
            if message.services.len() == 300 && !changed {
                changed = true;
                mesh.apply(
                    "east",
                    "one.yaml",
                    &strait_tests::service("shop", "svc-0", true, 9090),
                )
                .success()?;
            }
        }
    })?;
    ensure!(seen.len() >= 2, "{seen:?}");
    Ok(())
}

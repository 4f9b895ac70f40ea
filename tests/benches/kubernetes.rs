//! Kubernetes-mode benchmark: two real API servers (kube-apiserver 1.20.2 and etcd on loopback)
//! and two linked gateways in Kubernetes mode. West exports 1,000 services; prints the time until
//! every ServiceImport and imported EndpointSlice exists in east, the API writes per imported
//! service, the writes in a minute of no change and the gateways' memory, beside the targets and
//! beside a plain API round trip (one list of the 1,000 Services) from the same run.
//! Skipped, saying so, where the control plane is not built (scripts/test.sh builds it).
//!
//! Run: `cargo bench -p strait-tests --bench kubernetes` (`BENCH_IDLE_SECONDS` sets the idle
//! window, 60 s by default).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use strait_gateway::kubernetes::crd::{ServiceExport, ServiceImport};
use strait_gateway::kubernetes::slices;
use strait_tests::kube::{KubeCluster, binaries, link_with_resources};
use strait_tests::{Gateway, Mesh, metric, wait_for};

/// How many services west exports.
const SERVICES: usize = 1_000;
/// How many services are being created at once.
const PARALLELISM: usize = 32;
/// How long east may take to hold every import, from the last export.
const CONVERGENCE_LIMIT: Duration = Duration::from_secs(60);
/// How often east is listed while the imports arrive.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long the write counters must stand still for the gateways to count as settled.
const QUIET: Duration = Duration::from_secs(3);
/// The counter of a gateway's writes to its API server, by `resource`.
const WRITES: &str = "strait_kubernetes_writes_total";
/// The writes an imported service costs in the importing cluster.
const IMPORT_RESOURCES: [&str; 3] = ["serviceimports", "serviceimports/status", "endpointslices"];

/// Service shop/svc-N (port 8080, appProtocol http), a v1beta1 EndpointSlice with one ready
/// endpoint on 9090, then its ServiceExport; returns when the export was created. Headless:
/// the test control plane's service range (a /24) holds only 253 cluster IPs, and export reads
/// ports and slices, not the cluster IP.
async fn publish(client: &Client, index: usize) -> Result<Instant> {
    let name = format!("svc-{index}");
    let address = format!("10.1.{}.{}", index / 250, index % 250 + 1);
    let service: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"clusterIP": "None",
                 "ports": [{"name": "http", "port": 8080, "protocol": "TCP",
                            "appProtocol": "http", "targetPort": 9090}]},
    }))?;
    Api::<Service>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &service)
        .await
        .with_context(|| format!("creating Service shop/{name}"))?;
    let slice: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-abcde"), "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 9090, "protocol": "TCP"}],
    }))?;
    Api::<DynamicObject>::namespaced_with(client.clone(), "shop", &slices::resource("v1beta1"))
        .create(&PostParams::default(), &slice)
        .await
        .with_context(|| format!("creating the EndpointSlice of shop/{name}"))?;
    Api::<ServiceExport>::namespaced(client.clone(), "shop")
        .create(
            &PostParams::default(),
            &ServiceExport::new(&name, Default::default()),
        )
        .await
        .with_context(|| format!("creating ServiceExport shop/{name}"))?;
    Ok(Instant::now())
}

/// How many ServiceImports east holds in `shop`: one item and the API's count of the rest, so
/// that polling costs the API server little while the gateway writes to it.
async fn import_count(client: &Client) -> Result<usize> {
    let imports = Api::<ServiceImport>::namespaced(client.clone(), "shop");
    let first = imports
        .list_metadata(&ListParams::default().limit(1))
        .await?;
    match (
        first.metadata.remaining_item_count,
        &first.metadata.continue_,
    ) {
        (Some(rest), _) => Ok(first.items.len() + usize::try_from(rest)?),
        (None, None) => Ok(first.items.len()),
        // A continue token without a count: count them all.
        (None, Some(_)) => Ok(imports
            .list_metadata(&ListParams::default())
            .await?
            .items
            .len()),
    }
}

/// How many EndpointSlices east holds that were imported from west.
async fn slice_count(client: &Client, slice_resource: &ApiResource) -> Result<usize> {
    Ok(
        Api::<DynamicObject>::namespaced_with(client.clone(), "shop", slice_resource)
            .list_metadata(
                &ListParams::default().labels("multicluster.kubernetes.io/source-cluster=west"),
            )
            .await?
            .items
            .len(),
    )
}

/// When east showed its first ServiceImport, and when it held every import and slice.
struct Arrival {
    first: Instant,
    all: Instant,
}

/// Lists east until it holds every import and slice. Slices are listed only once every import
/// is there: the gateway writes a service's slice after its import.
async fn arrival(client: Client, slice_resource: ApiResource) -> Result<Arrival> {
    let mut first = None;
    loop {
        let imports = import_count(&client).await?;
        let now = Instant::now();
        if imports > 0 && first.is_none() {
            first = Some(now);
        }
        if imports >= SERVICES && slice_count(&client, &slice_resource).await? >= SERVICES {
            return Ok(Arrival {
                first: first.unwrap_or(now),
                all: Instant::now(),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Every series of a gateway's `strait_kubernetes_writes_total`, by resource: the ones this
/// benchmark knows of and any other (`links/status`, say).
fn writes(gateway: &Gateway) -> Result<BTreeMap<String, f64>> {
    let text = gateway.metrics()?;
    let mut writes = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with(&format!("{WRITES}{{")))
    {
        let resource = line
            .split_once("resource=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(resource, _)| resource.to_owned())
            .ok_or_else(|| anyhow!("a series without a resource: {line}"))?;
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("a series without a value: {line}"))?;
        writes.insert(resource, value);
    }
    Ok(writes)
}

/// The writes an imported service costs, summed over the importing gateway's services.
fn import_writes(gateway: &Gateway) -> Result<f64> {
    let text = gateway.metrics()?;
    Ok(IMPORT_RESOURCES
        .iter()
        .map(|resource| {
            metric(&text, WRITES, &[&format!("resource=\"{resource}\"")]).unwrap_or(0.0)
        })
        .sum())
}

/// Both gateways' writes, by gateway and resource (`west serviceexports/status`).
fn all_writes(gateways: &[&Gateway]) -> Result<BTreeMap<String, f64>> {
    let mut all = BTreeMap::new();
    for gateway in gateways {
        for (resource, value) in writes(gateway)? {
            all.insert(format!("{} {resource}", gateway.cluster), value);
        }
    }
    Ok(all)
}

fn total(writes: &BTreeMap<String, f64>) -> f64 {
    writes.values().sum()
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn main() -> Result<()> {
    if let Err(why) = binaries() {
        println!("skipped: {why}");
        return Ok(());
    }
    let idle = match std::env::var("BENCH_IDLE_SECONDS") {
        Ok(text) => Duration::from_secs(
            text.parse()
                .with_context(|| format!("BENCH_IDLE_SECONDS={text:?}: a whole number"))?,
        ),
        Err(_) => Duration::from_secs(60),
    };
    let mesh = Mesh::new()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut west = KubeCluster::start(&mesh, &runtime, "west")?;
    let mut east = KubeCluster::start(&mesh, &runtime, "east")?;
    link_with_resources(&mesh, &runtime, &east.client, "west")?;
    wait_for(Duration::from_secs(10), "east connected to west", || {
        Ok((mesh.link_state("east", "west")? == "connected").then_some(()))
    })?;
    let idle_rss = (west.gateway.rss_bytes()?, east.gateway.rss_bytes()?);

    // 1. West exports 1,000 services, 32 at a time, while east is listed until it holds them.
    let slice_resource = runtime.block_on(slices::served(&east.client));
    let watcher = runtime.spawn(arrival(east.client.clone(), slice_resource.clone()));
    let started = Instant::now();
    let exported: Vec<Instant> = runtime
        .block_on(async {
            let creating = futures::stream::iter(0..SERVICES)
                .map(|index| publish(&west.client, index))
                .buffer_unordered(PARALLELISM)
                .try_collect();
            tokio::time::timeout(Duration::from_secs(300), creating).await
        })
        .map_err(|_| anyhow!("creating {SERVICES} exported services took over 300 s"))??;
    let first_export = exported.iter().min().copied().unwrap_or(started);
    let last_export = exported.iter().max().copied().unwrap_or(started);
    let deadline = last_export + CONVERGENCE_LIMIT;
    let converged =
        match runtime.block_on(async { tokio::time::timeout_at(deadline.into(), watcher).await }) {
            Ok(joined) => joined??,
            Err(_) => {
                let (imports, slices) = runtime.block_on(async {
                    Ok::<_, anyhow::Error>((
                        import_count(&east.client).await?,
                        slice_count(&east.client, &slice_resource).await?,
                    ))
                })?;
                return Err(anyhow!(
                    "east holds {imports} ServiceImports and {slices} slices from west of \
                 {SERVICES}, {CONVERGENCE_LIMIT:?} after the last export\n{}\n{}",
                    east.gateway.log_tail(),
                    west.gateway.log_tail()
                ));
            }
        };
    let from_first = converged.all.saturating_duration_since(first_export);
    let from_last = converged.all.saturating_duration_since(last_export);
    let first_import = converged.first.saturating_duration_since(first_export);
    let importing = converged.all.saturating_duration_since(converged.first);
    let creation = last_export.duration_since(started);

    // 2. Settled: no gateway has written for a few seconds (trailing status writes counted).
    let mut last_total = -1.0;
    let mut still_since = Instant::now();
    wait_for(
        CONVERGENCE_LIMIT,
        "the gateways stop writing to the API",
        || {
            let now = total(&all_writes(&[&west.gateway, &east.gateway])?);
            if now != last_total {
                last_total = now;
                still_since = Instant::now();
            }
            Ok((still_since.elapsed() >= QUIET).then_some(()))
        },
    )?;
    let settled = still_since.duration_since(last_export);
    let east_writes = writes(&east.gateway)?;
    let west_writes = writes(&west.gateway)?;
    let import_writes = import_writes(&east.gateway)?;
    let loaded_rss = (west.gateway.rss_bytes()?, east.gateway.rss_bytes()?);

    // 3. A stretch of no change: nothing should be written.
    let before = all_writes(&[&west.gateway, &east.gateway])?;
    std::thread::sleep(idle);
    let after = all_writes(&[&west.gateway, &east.gateway])?;
    let idle_writes = total(&after) - total(&before);
    let written: Vec<String> = after
        .iter()
        .filter_map(|(series, a)| {
            let b = before.get(series).copied().unwrap_or(0.0);
            (*a != b).then(|| format!("{series} +{}", a - b))
        })
        .collect();

    // 4. Baseline: one list of the 1,000 Services, straight from west's API server.
    let services = Api::<Service>::namespaced(west.client.clone(), "shop");
    let mut lists = Vec::new();
    for _ in 0..5 {
        let listed = Instant::now();
        let count = runtime
            .block_on(services.list(&ListParams::default()))?
            .items
            .len();
        lists.push(listed.elapsed());
        anyhow::ensure!(count == SERVICES, "west lists {count} Services");
    }
    let list = median(lists);

    west.gateway.stop()?;
    east.gateway.stop()?;

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "strait Kubernetes-mode benchmark ({SERVICES} exported services, kube-apiserver 1.20.2 \
         and gateways as processes on loopback)"
    );
    println!();
    println!(
        "creating {SERVICES} Services, slices and ServiceExports in west ({PARALLELISM} at once): {:.0} ms",
        ms(creation)
    );
    println!(
        "every ServiceImport and slice in east, from the first export: {:>7.0} ms  (target < 5000 ms: {:.2}x of target)",
        ms(from_first),
        from_first.as_secs_f64() / 5.0
    );
    println!(
        "                                     from the last export: {:>7.0} ms  (target < 5000 ms: {:.2}x of target)",
        ms(from_last),
        from_last.as_secs_f64() / 5.0
    );
    println!(
        "  first ServiceImport in east {:.0} ms after the first export; from it to the last slice {:.0} ms ({:.1} ms per import write)",
        ms(first_import),
        ms(importing),
        ms(importing) / import_writes
    );
    println!(
        "  writes settled (none for {} s) {:.0} ms after the last export",
        QUIET.as_secs(),
        ms(settled)
    );
    println!(
        "baseline, one list of the {SERVICES} Services from west's API server (median of 5): {:.1} ms",
        ms(list)
    );
    println!(
        "  ratio, import time from the last export over one list: {:.1}x",
        from_last.as_secs_f64() / list.as_secs_f64()
    );
    println!();
    println!(
        "API writes per imported service (east): {:.2}  (target <= 3: {:.2}x of target)",
        import_writes / SERVICES as f64,
        import_writes / SERVICES as f64 / 3.0
    );
    for (resource, value) in &east_writes {
        println!("  east {resource:<22} {value:>6.0}");
    }
    for (resource, value) in &west_writes {
        println!("  west {resource:<22} {value:>6.0}");
    }
    println!(
        "writes in {} s of no change, both gateways: {idle_writes:.0}  (target 0){}",
        idle.as_secs(),
        if written.is_empty() {
            String::new()
        } else {
            format!(": {}", written.join(", "))
        }
    );
    println!();
    println!(
        "memory, watching {SERVICES} exported services: west {:.1} MiB, east {:.1} MiB  (target < 64 MiB: {:.2}x, {:.2}x of target)",
        mib(loaded_rss.0),
        mib(loaded_rss.1),
        mib(loaded_rss.0) / 64.0,
        mib(loaded_rss.1) / 64.0
    );
    println!(
        "  idle before the services: west {:.1} MiB, east {:.1} MiB",
        mib(idle_rss.0),
        mib(idle_rss.1)
    );
    Ok(())
}

//! Kubernetes mode against real API servers (kube-apiserver 1.20.2 on loopback, two clusters):
//! a ServiceExport in one cluster becomes a ServiceImport and EndpointSlices in the other within
//! 2 s, and goes as fast; a ServiceExport that cannot be exported says why in its status.
//! Skipped, saying so, where the control plane is not built (scripts/test.sh builds it).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::{Client, ResourceExt};
use strait_federation::policy::PolicyKind;
use strait_gateway::kubernetes::crd::{Link, ServiceExport, ServiceImport};
use strait_gateway::kubernetes::slices;
use strait_tests::kube::{
    ControlPlane, KubeCluster, account_kubeconfig, apply_stream, binaries, link_ready,
    link_with_resources, namespace_with, pod, prepare, request_token, service_account,
};
use strait_tests::workloads::client;
use strait_tests::{Mesh, NO_WEST_TO_API, wait_for};

/// Service shop/NAME (port 8080, appProtocol http), a v1beta1 EndpointSlice with one ready
/// endpoint on 9090, and (with `export`) its ServiceExport.
async fn publish(client: &Client, name: &str, export: bool) -> Result<()> {
    publish_at(client, name, "10.1.0.7:9090".parse()?, export).await
}

/// As [`publish`], the endpoint at `endpoint`.
async fn publish_at(
    client: &Client,
    name: &str,
    endpoint: std::net::SocketAddr,
    export: bool,
) -> Result<()> {
    publish_in(client, "shop", name, endpoint, export).await
}

/// As [`publish_at`], in namespace `namespace`.
async fn publish_in(
    client: &Client,
    namespace: &str,
    name: &str,
    endpoint: std::net::SocketAddr,
    export: bool,
) -> Result<()> {
    let services = Api::<Service>::namespaced(client.clone(), namespace);
    let service: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"name": "http", "port": 8080, "protocol": "TCP",
                            "appProtocol": "http", "targetPort": 9090}]},
    }))?;
    services.create(&PostParams::default(), &service).await?;
    let resource = slices::resource("v1beta1");
    let slice: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-abcde"), "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [endpoint.ip().to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": endpoint.port(), "protocol": "TCP"}],
    }))?;
    Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource)
        .create(&PostParams::default(), &slice)
        .await?;
    if export {
        export_in(client, namespace, name).await?;
    }
    Ok(())
}

/// A ServiceExport shop/NAME as MCS users write it: no spec at all.
async fn export_service(client: &Client, name: &str) -> Result<()> {
    export_in(client, "shop", name).await
}

/// A ServiceExport NAMESPACE/NAME, without spec.
async fn export_in(client: &Client, namespace: &str, name: &str) -> Result<()> {
    let export: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
        "metadata": {"name": name, "namespace": namespace},
    }))?;
    exports_in(client, namespace)
        .create(&PostParams::default(), &export)
        .await?;
    Ok(())
}

/// The API of ServiceExports in namespace shop, untyped (they may have no spec).
fn exports(client: &Client) -> Api<DynamicObject> {
    exports_in(client, "shop")
}

/// The API of ServiceExports in `namespace`, untyped.
fn exports_in(client: &Client, namespace: &str) -> Api<DynamicObject> {
    let resource = kube::api::ApiResource::erase::<ServiceExport>(&());
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// The clusters a ServiceImport lists, when it exists.
async fn imported_from(client: &Client, name: &str) -> Option<Vec<String>> {
    let import = Api::<ServiceImport>::namespaced(client.clone(), "shop")
        .get(name)
        .await
        .ok()?;
    Some(
        import
            .status?
            .clusters
            .into_iter()
            .map(|c| c.cluster)
            .collect(),
    )
}

/// The slices of shop/NAME imported from `cluster`, by the MCS labels.
async fn imported_slices(client: &Client, name: &str, cluster: &str) -> Result<Vec<DynamicObject>> {
    let resource = slices::served(client).await;
    let selector = format!(
        "multicluster.kubernetes.io/service-name={name},multicluster.kubernetes.io/source-cluster={cluster}"
    );
    Ok(
        Api::<DynamicObject>::namespaced_with(client.clone(), "shop", &resource)
            .list(&ListParams::default().labels(&selector))
            .await?
            .items,
    )
}

/// The `Valid` condition of a ServiceExport: (status, reason).
async fn validity(client: &Client, name: &str) -> Option<(String, String)> {
    condition(client, name, "Valid")
        .await
        .map(|(status, reason, _)| (status, reason))
}

/// A condition of ServiceExport shop/NAME: (status, reason, message).
async fn condition(client: &Client, name: &str, kind: &str) -> Option<(String, String, String)> {
    condition_in(client, "shop", name, kind).await
}

/// A condition of ServiceExport NAMESPACE/NAME.
async fn condition_in(
    client: &Client,
    namespace: &str,
    name: &str,
    kind: &str,
) -> Option<(String, String, String)> {
    let export = exports_in(client, namespace).get(name).await.ok()?;
    export.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .map(|c| {
            let text = |field: &str| c[field].as_str().unwrap_or_default().to_owned();
            (text("status"), text("reason"), text("message"))
        })
}

#[test]
fn an_export_in_one_cluster_is_imported_in_the_other_within_two_seconds_and_withdrawn_as_fast()
-> Result<()> {
    let Some((mesh, runtime, mut west, mut east)) = two_clusters()? else {
        return Ok(());
    };
    // West's Link applied in east, first with a token tampered with: refused, and the Link's
    // status says why; then with the right token: connected.
    let stream = mesh.ctl("west", &["link"]).success()?;
    anyhow::ensure!(
        stream.contains("kind: Secret")
            && stream.contains("kind: Link")
            && stream.contains("namespace: strait-system"),
        "strait link prints a Secret and a Link in Kubernetes mode: {stream}"
    );
    let tampered = stream
        .split("---\n")
        .map(|document| -> Result<String> {
            let mut value: serde_json::Value = serde_saphyr::from_str(document)?;
            if value["kind"] == "Secret" {
                let token = value["stringData"]["token"].as_str().context("a token")?;
                value["stringData"]["token"] = format!("{token}x").into();
            }
            Ok(serde_json::to_string(&value)?)
        })
        .collect::<Result<Vec<_>>>()?
        .join("\n---\n");
    runtime.block_on(apply_stream(&east.client, &tampered))?;
    wait_for(
        Duration::from_secs(10),
        "Link west refused as tampered",
        || {
            Ok(runtime
                .block_on(link_ready(&east.client, "west"))
                .filter(|(status, reason, message)| {
                    status == "False" && reason == "Refused" && message.contains("tampered with")
                })
                .map(|_| ()))
        },
    )
    .with_context(|| east.gateway.log_tail())?;
    runtime.block_on(apply_stream(&east.client, &stream))?;
    wait_for(Duration::from_secs(10), "Link west ready", || {
        Ok(runtime
            .block_on(link_ready(&east.client, "west"))
            .filter(|(status, _, _)| status == "True")
            .map(|_| ()))
    })
    .with_context(|| east.gateway.log_tail())?;
    anyhow::ensure!(mesh.link_state("east", "west")? == "connected");

    // Export in west: imported in east within 2 s.
    runtime.block_on(publish(&west.client, "api", false))?;
    let exported = Instant::now();
    runtime.block_on(export_service(&west.client, "api"))?;
    wait_for(
        Duration::from_secs(2),
        "ServiceImport shop/api and its slice in east",
        || {
            let import = runtime.block_on(imported_from(&east.client, "api"));
            let slices = runtime.block_on(imported_slices(&east.client, "api", "west"))?;
            Ok(
                (import.as_deref() == Some(&["west".to_owned()][..]) && slices.len() == 1)
                    .then_some(()),
            )
        },
    )
    .with_context(|| east.gateway.log_tail())?;
    let slices = runtime.block_on(imported_slices(&east.client, "api", "west"))?;
    eprintln!("imported in {:?}", exported.elapsed());
    anyhow::ensure!(
        slices.len() == 1,
        "one slice from west, got {}",
        slices.len()
    );
    let slice = &slices[0];
    anyhow::ensure!(
        slice
            .labels()
            .get("endpointslice.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some("strait.dev"),
        "the slice says who manages it: {:?}",
        slice.labels()
    );
    anyhow::ensure!(
        slice
            .owner_references()
            .iter()
            .any(|o| o.kind == "ServiceImport" && o.name == "api"),
        "the ServiceImport owns the slice"
    );
    anyhow::ensure!(
        slice.data["endpoints"][0]["addresses"][0] == "10.1.0.7",
        "the slice holds west's endpoint: {}",
        slice.data
    );
    let import = runtime
        .block_on(Api::<ServiceImport>::namespaced(east.client.clone(), "shop").get("api"))?;
    anyhow::ensure!(import.spec.kind == "ClusterSetIP");
    anyhow::ensure!(
        import.spec.ports.len() == 1 && import.spec.ports[0].port == 8080,
        "the Service's port: {:?}",
        import.spec.ports
    );
    anyhow::ensure!(
        import.spec.ips.len() == 1,
        "the clusterset virtual address: {:?}",
        import.spec.ips
    );
    wait_for(Duration::from_secs(2), "shop/api Valid in west", || {
        Ok(runtime
            .block_on(validity(&west.client, "api"))
            .filter(|v| v == &("True".to_owned(), "Exported".to_owned()))
            .map(|_| ()))
    })?;

    // An export without its Service says so, and nothing is imported for it.
    runtime.block_on(export_service(&west.client, "ghost"))?;
    wait_for(
        Duration::from_secs(2),
        "shop/ghost not Valid in west",
        || {
            Ok(runtime
                .block_on(validity(&west.client, "ghost"))
                .filter(|v| v == &("False".to_owned(), "ServiceNotFound".to_owned()))
                .map(|_| ()))
        },
    )?;
    anyhow::ensure!(
        runtime
            .block_on(imported_from(&east.client, "ghost"))
            .is_none()
    );

    // The export goes: so do the import and its slices, within 2 s.
    runtime.block_on(exports(&west.client).delete("api", &DeleteParams::default()))?;
    let withdrawn = Instant::now();
    wait_for(Duration::from_secs(2), "shop/api gone from east", || {
        let import = runtime.block_on(imported_from(&east.client, "api"));
        let slices = runtime.block_on(imported_slices(&east.client, "api", "west"))?;
        Ok((import.is_none() && slices.is_empty()).then_some(()))
    })
    .with_context(|| east.gateway.log_tail())?;
    eprintln!("withdrawn in {:?}", withdrawn.elapsed());
    let imports = runtime
        .block_on(Api::<ServiceImport>::all(east.client.clone()).list(&ListParams::default()))?;
    anyhow::ensure!(
        imports.items.iter().all(|i| i.name_any() != "api"),
        "no import left"
    );

    // The Link resource is deleted: east unlinks, on both sides.
    runtime.block_on(
        Api::<Link>::namespaced(east.client.clone(), "strait-system")
            .delete("west", &DeleteParams::default()),
    )?;
    wait_for(
        Duration::from_secs(10),
        "the link gone from both clusters",
        || {
            Ok((mesh.link_state("east", "west")?.is_empty()
                && mesh.link_state("west", "east")?.is_empty())
            .then_some(()))
        },
    )?;

    west.gateway.stop()?;
    east.gateway.stop()?;
    Ok(())
}

/// Two clusters, west and east, each with its API server and its gateway in Kubernetes mode;
/// `None` (saying so) where the control plane is not built.
fn two_clusters() -> Result<Option<(Mesh, tokio::runtime::Runtime, KubeCluster, KubeCluster)>> {
    if let Err(why) = binaries() {
        eprintln!("skipped: {why}");
        return Ok(None);
    }
    let mesh = Mesh::new()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let west = KubeCluster::start(&mesh, &runtime, "west")?;
    let east = KubeCluster::start(&mesh, &runtime, "east")?;
    Ok(Some((mesh, runtime, west, east)))
}

/// Waits until ServiceImport shop/NAME lists west alone among the clusters that export it.
fn wait_imported_from_west(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    name: &str,
    limit: Duration,
) -> Result<()> {
    wait_for(limit, &format!("shop/{name} imported from west"), || {
        Ok(runtime
            .block_on(imported_from(client, name))
            .filter(|clusters| clusters == &["west"])
            .map(|_| ()))
    })
}

/// The ports of an import, as east sees them.
async fn import_ports(client: &Client, name: &str) -> Option<Vec<i32>> {
    let import = Api::<ServiceImport>::namespaced(client.clone(), "shop")
        .get(name)
        .await
        .ok()?;
    Some(import.spec.ports.iter().map(|p| p.port).collect())
}

#[test]
fn a_service_both_clusters_export_lists_both_follows_its_ports_and_survives_an_api_restart()
-> Result<()> {
    let Some((mesh, runtime, mut west, mut east)) = two_clusters()? else {
        return Ok(());
    };
    // A short Lease, so that the API outage below outlasts it.
    east.gateway.stop()?;
    let config = east.gateway.dir.join("gateway.yaml");
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        text.replace(
            "  leaseDurationSeconds: 15\n",
            "  leaseDurationSeconds: 3\n",
        ),
    )?;
    east.gateway.start(&mesh)?;
    link_with_resources(&mesh, &runtime, &east.client, "west")?;

    // Both export shop/api, west first: each imports the other's, and both list the two
    // clusters. (Creation times have a resolution of a second, and the oldest export holds
    // where the clusters disagree: the wait makes west's the older.)
    runtime.block_on(publish(&west.client, "api", true))?;
    std::thread::sleep(Duration::from_millis(1100));
    runtime.block_on(publish(&east.client, "api", true))?;
    wait_for(
        Duration::from_secs(10),
        "shop/api imported both ways",
        || {
            let in_east = runtime.block_on(imported_from(&east.client, "api"));
            let in_west = runtime.block_on(imported_from(&west.client, "api"));
            Ok(
                (in_east.as_deref() == Some(&["east".to_owned(), "west".to_owned()][..])
                    && in_west.as_deref() == Some(&["west".to_owned(), "east".to_owned()][..]))
                .then_some(()),
            )
        },
    )
    .with_context(|| east.gateway.log_tail())?;
    anyhow::ensure!(
        runtime
            .block_on(imported_slices(&east.client, "api", "east"))?
            .is_empty(),
        "a cluster's own endpoints get no imported slice"
    );
    anyhow::ensure!(
        runtime
            .block_on(imported_slices(&east.client, "api", "west"))?
            .len()
            == 1
    );

    for (cluster, client) in [("west", &west.client), ("east", &east.client)] {
        wait_for(
            Duration::from_secs(2),
            &format!("{cluster}'s export of shop/api without conflict"),
            || {
                Ok(runtime
                    .block_on(condition(client, "api", "Conflict"))
                    .filter(|(status, reason, _)| status == "False" && reason == "NoConflict")
                    .map(|_| ()))
            },
        )?;
    }

    // West's port changes: east's import follows within 2 s (west's export is the older, so
    // its ports hold), and both exports say they conflict, naming the clusters.
    let services = Api::<Service>::namespaced(west.client.clone(), "shop");
    let patch = serde_json::json!({"spec": {"ports": [{"name": "http", "port": 8081,
        "protocol": "TCP", "appProtocol": "http", "targetPort": 9090}]}});
    runtime.block_on(services.patch(
        "api",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    ))?;
    wait_for(
        Duration::from_secs(2),
        "east's import of shop/api on 8081",
        || {
            Ok(runtime
                .block_on(import_ports(&east.client, "api"))
                .filter(|ports| ports == &[8081])
                .map(|_| ()))
        },
    )?;
    for (cluster, client) in [("west", &west.client), ("east", &east.client)] {
        wait_for(
            Duration::from_secs(2),
            &format!("{cluster}'s export of shop/api in conflict"),
            || {
                Ok(runtime
                    .block_on(condition(client, "api", "Conflict"))
                    .filter(|(status, reason, message)| {
                        status == "True"
                            && reason == "PortConflict"
                            && message.contains("those of west, the oldest export (http 8081/http)")
                            && message.contains("east (http 8080/http)")
                    })
                    .map(|_| ()))
            },
        )
        .with_context(|| {
            format!(
                "{:?}",
                runtime.block_on(condition(client, "api", "Conflict"))
            )
        })?;
    }
    anyhow::ensure!(
        runtime.block_on(import_ports(&west.client, "api")) == Some(vec![8081]),
        "west's own import of shop/api keeps the oldest export's ports"
    );

    // East's API server goes away: the gateway says so and keeps serving; once it is back the
    // gateway catches up on its own.
    east.plane.stop_apiserver();
    wait_for(
        Duration::from_secs(30),
        "east's gateway not ready, naming Kubernetes",
        || {
            let (status, body) = strait_tests::http_get(east.gateway.admin, "/readyz")?;
            Ok((status == 503 && body.contains("kubernetes")).then_some(()))
        },
    )?;
    anyhow::ensure!(
        mesh.services("east")?
            .iter()
            .any(|(name, _)| name == "shop/api"),
        "east still serves its last catalog"
    );
    // Past its Lease (3 s) without an API, east stops writing but keeps peering (fail
    // static): an API outage must not cut the clusters apart.
    std::thread::sleep(Duration::from_secs(5));
    anyhow::ensure!(
        mesh.link_state("east", "west")? == "connected",
        "east stopped peering while its API was away"
    );
    runtime.block_on(publish(&west.client, "web", true))?;
    east.plane.start_apiserver()?;
    east.client = runtime.block_on(east.plane.client())?;
    wait_imported_from_west(&runtime, &east.client, "web", Duration::from_secs(30))
        .with_context(|| east.gateway.log_tail())?;
    wait_for(
        Duration::from_secs(30),
        "east's gateway ready again",
        || {
            // Not ready: the reason is the last observation the failure shows.
            let (status, body) = strait_tests::http_get(east.gateway.admin, "/readyz")?;
            anyhow::ensure!(status == 200, "/readyz {status}: {}", body.trim());
            Ok(Some(()))
        },
    )
    .with_context(|| east.gateway.log_tail())?;

    west.gateway.stop()?;
    east.gateway.stop()?;
    Ok(())
}

/// A TokenRequest for service account shop/NAME with `audience`, written to a file.
async fn token_file(
    client: &Client,
    name: &str,
    audience: &str,
    path: &std::path::Path,
) -> Result<()> {
    std::fs::write(path, request_token(client, "shop", name, audience).await?)?;
    Ok(())
}

#[test]
fn a_sidecar_proves_its_service_account_with_a_projected_token_and_wrong_ones_are_refused()
-> Result<()> {
    if let Err(why) = binaries() {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    let mesh = Mesh::new()?;
    let plane = ControlPlane::start("west", mesh.dir.path())?;
    let runtime = tokio::runtime::Runtime::new()?;
    let west = runtime.block_on(plane.client())?;
    runtime.block_on(prepare(&west))?;
    let accounts =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(west.clone(), "shop");
    for name in ["web", "gone"] {
        runtime.block_on(service_account(&west, "shop", name))?;
    }
    let mut gateway = mesh.kubernetes_gateway("west", &plane.kubeconfig)?;
    gateway.start(&mesh)?;
    let web = mesh.dir.path().join("web.token");
    let vault = mesh.dir.path().join("vault.token");
    let gone = mesh.dir.path().join("gone.token");
    runtime.block_on(token_file(&west, "web", "strait", &web))?;
    runtime.block_on(token_file(&west, "web", "vault", &vault))?;
    runtime.block_on(token_file(&west, "gone", "strait", &gone))?;
    runtime.block_on(accounts.delete("gone", &DeleteParams::default()))?;

    let bundle = mesh.trust.join("bundle.pem");
    let args = |token: &std::path::Path| -> Vec<String> {
        [
            "sidecar",
            "run",
            "--gateway",
            &gateway.api.to_string(),
            "--bundle",
            &bundle.to_string_lossy(),
            "--token-file",
            &token.to_string_lossy(),
            "--proxy-addr",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    // The right audience: the sidecar starts as shop/web, which the API server vouched for.
    let sidecar = strait_tests::Process::start(&mesh, "web", &args(&web))?;
    let identity = sidecar.started["identity"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(
        identity == "spiffe://example.mesh/cluster/west/ns/shop/sa/web",
        "identity from the review: {identity}"
    );

    // Another audience: refused, naming it.
    let refused = |token: &std::path::Path| {
        let arguments = args(token);
        let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        mesh.cli(&arguments, &[])
    };
    let other = refused(&vault);
    anyhow::ensure!(!other.ok, "a token for vault was accepted");
    anyhow::ensure!(
        other
            .stderr
            .contains("audience is [\"vault\"], not \"strait\""),
        "the refusal names the audience: {}",
        other.stderr
    );
    // A deleted service account: the API server refuses the token, and the sidecar says so.
    let deleted = refused(&gone);
    anyhow::ensure!(
        !deleted.ok,
        "a deleted service account's token was accepted"
    );
    anyhow::ensure!(
        deleted
            .stderr
            .contains("service-account token: the API server refused the token"),
        "the refusal says the API server refused it: {}",
        deleted.stderr
    );
    eprintln!("deleted account: {}", deleted.stderr.trim());
    drop(sidecar);
    gateway.stop()?;
    Ok(())
}

/// Runs shop/api in `cluster` for real: the HTTP sample app behind its sidecar, and the
/// Service, the EndpointSlice (naming the sidecar's inbound address, as a pod's would) and the
/// ServiceExport for it. The processes live as long as what it returns.
fn serve_api(
    mesh: &Mesh,
    runtime: &tokio::runtime::Runtime,
    cluster: &KubeCluster,
) -> Result<[strait_tests::Process; 2]> {
    let name = cluster.gateway.cluster.as_str();
    let app = mesh.app_with("http", name, "shop/api", "api-0", &[])?;
    // A sidecar as a pod has it: its service account's projected token, the app's port, and
    // nothing registered (the endpoint is the EndpointSlice's).
    runtime.block_on(service_account(&cluster.client, "shop", "api"))?;
    let token = mesh.dir.path().join(format!("api-{name}.token"));
    runtime.block_on(token_file(&cluster.client, "api", "strait", &token))?;
    let sidecar = strait_tests::Process::start(
        mesh,
        &format!("api-{name}"),
        &[
            "sidecar".to_owned(),
            "run".into(),
            "--gateway".into(),
            cluster.gateway.api.to_string(),
            "--bundle".into(),
            mesh.trust.join("bundle.pem").to_string_lossy().into_owned(),
            "--token-file".into(),
            token.to_string_lossy().into_owned(),
            "--app-port".into(),
            format!("8080/http={}", app.addr("address")?),
            "--admin-addr".into(),
            "127.0.0.1:0".into(),
        ],
    )?;
    runtime.block_on(publish_at(
        &cluster.client,
        "api",
        sidecar.addr("inbound")?,
        true,
    ))?;
    Ok([app, sidecar])
}

/// The API of AuthorizationPolicies in namespace shop.
fn authorization_policies(client: &Client) -> Api<DynamicObject> {
    let resource = strait_gateway::kubernetes::policies::resource(PolicyKind::AuthorizationPolicy);
    Api::namespaced_with(client.clone(), "shop", &resource)
}

/// `kubectl apply -f` of a policy document.
async fn kubectl_create(client: &Client, yaml: &str) -> Result<()> {
    let object: DynamicObject = serde_saphyr::from_str(yaml)?;
    authorization_policies(client)
        .create(&PostParams::default(), &object)
        .await?;
    Ok(())
}

/// A policy resource's status: (Accepted status, its message, origin), when it exists.
async fn policy_status(client: &Client, name: &str) -> Option<(String, String, String)> {
    let object = authorization_policies(client).get(name).await.ok()?;
    let status = &object.data["status"];
    let accepted = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Accepted")?;
    Some((
        accepted["status"].as_str()?.to_owned(),
        accepted["message"].as_str().unwrap_or_default().to_owned(),
        status["origin"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// The policies `strait get policies -o json` lists: (name, origin).
fn listed(mesh: &Mesh, cluster: &str) -> Result<Vec<(String, String)>> {
    let text = mesh
        .ctl(cluster, &["get", "policies", "-o", "json"])
        .success()?;
    let list: serde_json::Value = serde_json::from_str(&text)?;
    Ok(list["items"]
        .as_array()
        .context("items")?
        .iter()
        .map(|item| {
            (
                item["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                item["status"]["origin"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect())
}

/// The status of GET / at `host` through `proxy` (0 when it fails).
fn answer(proxy: std::net::SocketAddr, host: &str) -> u16 {
    strait_tests::http_get_host(proxy, host, "/").map_or(0, |(status, _)| status)
}

#[test]
fn a_policy_applied_with_kubectl_in_east_holds_in_west_and_a_delete_anywhere_ends_it() -> Result<()>
{
    let Some((mesh, runtime, west, east)) = two_clusters()? else {
        return Ok(());
    };
    const API: &str = "api.shop.svc.clusterset.local";
    link_with_resources(&mesh, &runtime, &east.client, "west")?;

    // West runs shop/api (the sample app behind its sidecar; its EndpointSlice names the
    // sidecar's inbound address, as a pod's would) and a client, shop/web.
    let api = serve_api(&mesh, &runtime, &west)?;
    let web = client(&mesh, "west", &[])?;
    let proxy = web.addr("proxy")?;
    wait_for(
        Duration::from_secs(20),
        "shop/api answering in west",
        || Ok((answer(proxy, API) == 200).then_some(())),
    )
    .with_context(|| west.gateway.log_tail())?;
    // The pod's sidecar registers no service, yet labels what it serves with the service the
    // request was addressed to, once its view holds the EndpointSlice naming it (that view may
    // reach it a moment after the caller's: requests are sent until one is labelled so).
    let admin = api[1].addr("admin")?;
    wait_for(
        Duration::from_secs(10),
        "an inbound request of shop/api in the sidecar's metrics",
        || {
            answer(proxy, API);
            let (_, metrics) = strait_tests::http_get(admin, "/metrics")?;
            let served = strait_tests::metric(
                &metrics,
                "strait_requests_total",
                &[
                    "direction=\"inbound\"",
                    "namespace=\"shop\"",
                    "service=\"api\"",
                ],
            );
            Ok(served.is_some_and(|n| n >= 1.0).then_some(()))
        },
    )?;

    // A resource strait cannot accept: its status says which field, and nothing changes.
    runtime.block_on(kubectl_create(
        &east.client,
        &NO_WEST_TO_API
            .replace("no-west-to-api", "bad")
            .replace("action: deny", "action: maybe"),
    ))?;
    wait_for(Duration::from_secs(5), "shop/bad refused in east", || {
        Ok(runtime
            .block_on(policy_status(&east.client, "bad"))
            .filter(|(accepted, message, _)| accepted == "False" && message.contains("spec.action"))
            .map(|_| ()))
    })
    .with_context(|| east.gateway.log_tail())?;

    // The deny applied in east: in west's set and west's API, and enforced by west's sidecar.
    let applied = Instant::now();
    runtime.block_on(kubectl_create(&east.client, NO_WEST_TO_API))?;
    wait_for(Duration::from_secs(5), "the deny enforced in west", || {
        Ok((answer(proxy, API) == 403).then_some(()))
    })
    .with_context(|| west.gateway.log_tail())?;
    eprintln!(
        "applied in east, enforced in west in {:?}",
        applied.elapsed()
    );
    wait_for(
        Duration::from_secs(2),
        "the deny shown in west's API",
        || {
            Ok(runtime
                .block_on(policy_status(&west.client, "no-west-to-api"))
                .filter(|(accepted, _, origin)| accepted == "True" && origin == "east")
                .map(|_| ()))
        },
    )
    .with_context(|| {
        let object = runtime.block_on(authorization_policies(&west.client).get("no-west-to-api"));
        format!("{:?}\n{}", object.map(|o| o.data), west.gateway.log_tail())
    })?;
    anyhow::ensure!(
        listed(&mesh, "west")? == [("no-west-to-api".to_owned(), "east".to_owned())],
        "west holds the deny alone (the refused resource never left east)"
    );
    anyhow::ensure!(
        runtime
            .block_on(policy_status(&east.client, "no-west-to-api"))
            .is_some_and(|(accepted, _, origin)| accepted == "True" && origin == "east"),
        "east's resource says it is accepted, made in east"
    );
    anyhow::ensure!(
        runtime
            .block_on(policy_status(&west.client, "bad"))
            .is_none(),
        "the refused resource reached west"
    );

    // What the gateways wrote is not taken back as a change: nothing more is written, and the
    // version stays the one east made.
    let writes = |gateway: &strait_tests::Gateway| -> Result<f64> {
        let text = gateway.metrics()?;
        Ok(["resource=\"policies\"", "resource=\"policies/status\""]
            .iter()
            .filter_map(|label| {
                strait_tests::metric(&text, "strait_kubernetes_writes_total", &[label])
            })
            .sum())
    };
    let version = || -> Result<String> {
        let text = mesh
            .ctl("west", &["get", "policies", "-o", "json"])
            .success()?;
        let list: serde_json::Value = serde_json::from_str(&text)?;
        Ok(list["items"][0]["status"]["version"].to_string())
    };
    let before = (writes(&west.gateway)?, writes(&east.gateway)?, version()?);
    std::thread::sleep(Duration::from_secs(2));
    let after = (writes(&west.gateway)?, writes(&east.gateway)?, version()?);
    anyhow::ensure!(
        before == after,
        "writes or version moved at rest: {before:?} → {after:?}"
    );

    // Deleted in west: gone everywhere, and west's client is let through again.
    runtime.block_on(
        authorization_policies(&west.client).delete("no-west-to-api", &DeleteParams::default()),
    )?;
    let deleted = Instant::now();
    wait_for(
        Duration::from_secs(2),
        "the deny gone from east's API",
        || {
            Ok(runtime
                .block_on(authorization_policies(&east.client).get_opt("no-west-to-api"))?
                .is_none()
                .then_some(()))
        },
    )
    .with_context(|| east.gateway.log_tail())?;
    eprintln!("deleted in west, gone from east in {:?}", deleted.elapsed());
    wait_for(Duration::from_secs(5), "west's client let through", || {
        Ok((answer(proxy, API) == 200).then_some(()))
    })?;
    anyhow::ensure!(
        listed(&mesh, "east")?.is_empty(),
        "east's set still holds it"
    );
    anyhow::ensure!(
        runtime
            .block_on(authorization_policies(&west.client).get_opt("no-west-to-api"))?
            .is_none(),
        "west's resource is gone"
    );
    Ok(())
}

/// The name of the replica that holds the Lease of the cluster's gateways (`POD_NAME`, or
/// `host-pid` outside a pod).
async fn lease_holder(client: &Client) -> Option<String> {
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        client.clone(),
        "strait-system",
    )
    .get("strait-gateway")
    .await
    .ok()?;
    lease.spec?.holder_identity
}

/// Pods strait-system/NAME for gateway replicas (no kubelet runs them: they are where a
/// replica says whether it leads).
async fn replica_pods(client: &Client, names: &[&str]) -> Result<()> {
    service_account(
        client,
        "strait-system",
        strait_gateway::kubernetes::rbac::NAME,
    )
    .await?;
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), "strait-system");
    for name in names {
        let pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "strait-system"},
            "spec": {"serviceAccountName": "strait-gateway", "automountServiceAccountToken": false,
                     "containers": [{"name": "gateway", "image": "strait"}]},
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    Ok(())
}

/// The pods that say they lead.
async fn leading_pods(client: &Client) -> Result<Vec<String>> {
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), "strait-system");
    Ok(pods
        .list(&ListParams::default().labels("strait.dev/leader=true"))
        .await?
        .items
        .into_iter()
        .map(|p| p.name_any())
        .collect())
}

/// The virtual address in ServiceImport shop/NAME, when it exists.
async fn import_ips(client: &Client, name: &str) -> Option<Vec<String>> {
    let import = Api::<ServiceImport>::namespaced(client.clone(), "shop")
        .get(name)
        .await
        .ok()?;
    Some(import.spec.ips)
}

const API: &str = "api.shop.svc.clusterset.local";

/// A sidecar of shop/web in east that proves its service account to `gateway` (one replica of
/// east's), and the address of its HTTP proxy.
fn web_sidecar(
    mesh: &Mesh,
    runtime: &tokio::runtime::Runtime,
    east: &Client,
    gateway: &strait_tests::Gateway,
) -> Result<(strait_tests::Process, std::net::SocketAddr)> {
    runtime.block_on(service_account(east, "shop", "web"))?;
    let token = mesh.dir.path().join("web.token");
    runtime.block_on(token_file(east, "web", "strait", &token))?;
    let bundle = mesh.trust.join("bundle.pem");
    let web = strait_tests::Process::start(
        mesh,
        "web-east",
        &[
            "sidecar".to_owned(),
            "run".into(),
            "--gateway".into(),
            gateway.api.to_string(),
            "--bundle".into(),
            bundle.to_string_lossy().into_owned(),
            "--token-file".into(),
            token.to_string_lossy().into_owned(),
            "--proxy-addr".into(),
            "127.0.0.1:0".into(),
        ],
    )?;
    let proxy = web.addr("proxy")?;
    Ok((web, proxy))
}

/// Flows a gateway relayed out to west: open ones and ended ones.
fn flows_to_west(gateway: &strait_tests::Gateway) -> Result<f64> {
    let text = gateway.metrics()?;
    let outbound = ["direction=\"outbound\"", "peer=\"west\""];
    let open = strait_tests::metric(&text, "strait_gateway_open_flows", &outbound).unwrap_or(0.0);
    let ended = strait_tests::metric(&text, "strait_gateway_flows_total", &outbound).unwrap_or(0.0);
    Ok(open + ended)
}

#[test]
fn two_replicas_both_peer_a_killed_leader_costs_no_request_and_nothing_is_lost_even_on_an_empty_disk()
-> Result<()> {
    let Some((mesh, runtime, west, mut east)) = two_clusters()? else {
        return Ok(());
    };
    // East runs two replicas, each in a pod of its own: the first leads, the second stands by.
    runtime.block_on(replica_pods(&east.client, &["east-a", "east-b"]))?;
    east.gateway.stop()?;
    east.gateway.env = vec![("POD_NAME".into(), "east-a".into())];
    east.gateway.start(&mesh)?;
    let first = Some("east-a".to_owned());
    wait_for(
        Duration::from_secs(10),
        "east's first replica leading",
        || {
            Ok((runtime.block_on(lease_holder(&east.client)) == first
                && runtime.block_on(leading_pods(&east.client))? == ["east-a"])
            .then_some(()))
        },
    )
    .with_context(|| {
        format!(
            "holder {:?}, leading pods {:?}\n{}",
            runtime.block_on(lease_holder(&east.client)),
            runtime.block_on(leading_pods(&east.client)).ok(),
            east.gateway.log_tail()
        )
    })?;
    let mut standby = east.gateway.replica("b")?;
    standby.env = vec![("POD_NAME".into(), "east-b".into())];
    standby.start(&mesh)?;
    link_with_resources(&mesh, &runtime, &east.client, "west")?;
    // West serves shop/api for real (the sample app behind its sidecar).
    let _api = serve_api(&mesh, &runtime, &west)?;
    runtime.block_on(kubectl_create(&east.client, NO_WEST_TO_API))?;
    wait_for(Duration::from_secs(5), "shop/api imported in east", || {
        Ok(runtime
            .block_on(import_ips(&east.client, "api"))
            .filter(|ips| ips.len() == 1)
            .map(|_| ()))
    })
    .with_context(|| east.gateway.log_tail())?;
    let ips = runtime.block_on(import_ips(&east.client, "api"));
    wait_for(Duration::from_secs(5), "the deny in west", || {
        Ok((listed(&mesh, "west")?.len() == 1).then_some(()))
    })?;
    anyhow::ensure!(
        runtime.block_on(lease_holder(&east.client)) == first,
        "the standby took the Lease while the first replica was alive"
    );
    let leader_writes = |gateway: &strait_tests::Gateway| -> f64 {
        gateway
            .metrics()
            .ok()
            .and_then(|text| {
                strait_tests::metric(
                    &text,
                    "strait_kubernetes_writes_total",
                    &["resource=\"serviceimports\""],
                )
            })
            .unwrap_or(0.0)
    };
    anyhow::ensure!(
        leader_writes(&standby) == 0.0,
        "the standby wrote imports while it stood by"
    );
    // Both replicas dial west: west holds a session with each.
    wait_for(
        Duration::from_secs(10),
        "west in session with both of east's replicas",
        || Ok((mesh.link_view("west", "east")?["replicas"] == 2).then_some(())),
    )
    .with_context(|| format!("{}", mesh.link_view("west", "east").unwrap_or_default()))?;
    // A sidecar of east that proves its service account to the standby: the standby serves
    // it the clusterset from its own session with west, and carries its flows itself.
    let (_web, proxy) = web_sidecar(&mesh, &runtime, &east.client, &standby)?;
    wait_for(
        Duration::from_secs(10),
        "shop/api through the standby",
        || Ok((answer(proxy, API) == 200).then_some(())),
    )
    .with_context(|| standby.log_tail())?;
    // The sidecar keeps its flow open (a pooled connection): count open flows and ended ones.
    anyhow::ensure!(
        flows_to_west(&standby)? >= 1.0,
        "the standby relayed no flow to west"
    );
    anyhow::ensure!(
        flows_to_west(&east.gateway)? == 0.0,
        "the standby handed its flows to the leader instead of carrying them"
    );

    // Requests every 20 ms through the standby's sidecar while the leader dies without a word.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let traffic = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                statuses.push(answer(proxy, API));
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
            statuses
        })
    };
    wait_for(Duration::from_secs(5), "traffic flowing", || {
        Ok((sent.load(std::sync::atomic::Ordering::Relaxed) >= 10).then_some(()))
    })?;
    // The standby takes the Lease over within its duration (15 s) and carries on; its peering
    // never stopped, and nothing it had is lost.
    east.gateway.kill()?;
    let killed = Instant::now();
    let second = Some("east-b".to_owned());
    wait_for(Duration::from_secs(20), "the standby leading", || {
        Ok((runtime.block_on(lease_holder(&east.client)) == second).then_some(()))
    })
    .with_context(|| standby.log_tail())?;
    wait_for(
        Duration::from_secs(5),
        "east-b's pod alone labelled leader",
        || Ok((runtime.block_on(leading_pods(&east.client))? == ["east-b"]).then_some(())),
    )?;
    eprintln!(
        "standby took the Lease over {:?} after the kill",
        killed.elapsed()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = traffic
        .join()
        .map_err(|_| anyhow::anyhow!("the traffic thread panicked"))?;
    let failed = statuses.iter().filter(|s| **s != 200).count();
    eprintln!(
        "{} requests while the leader was killed and replaced, {failed} failed",
        statuses.len()
    );
    anyhow::ensure!(
        failed == 0 && statuses.len() >= 100,
        "{failed} of {} requests failed across the leader's death: {statuses:?}",
        statuses.len()
    );
    // West lost east's first replica with its connection (idle timeout); the second's session
    // carries the peering on, so east never counted as disconnected there.
    wait_for(
        Duration::from_secs(15),
        "west in session with east's remaining replica alone",
        || Ok((mesh.link_view("west", "east")?["replicas"] == 1).then_some(())),
    )?;
    anyhow::ensure!(
        mesh.link_state("west", "east")? == "connected",
        "west lost its link with east"
    );
    runtime.block_on(publish(&west.client, "web", true))?;
    wait_imported_from_west(&runtime, &east.client, "web", Duration::from_secs(10))
        .with_context(|| standby.log_tail())?;
    eprintln!("new import written {:?} after the kill", killed.elapsed());
    anyhow::ensure!(
        runtime.block_on(import_ips(&east.client, "api")) == ips,
        "shop/api kept its virtual address"
    );
    wait_for(
        Duration::from_secs(5),
        "shop/api through the new leader",
        || Ok((answer(proxy, API) == 200).then_some(())),
    )
    .with_context(|| standby.log_tail())?;
    anyhow::ensure!(listed(&mesh, "west")?.len() == 1, "west lost the deny");
    anyhow::ensure!(
        runtime
            .block_on(policy_status(&east.client, "no-west-to-api"))
            .is_some_and(|(accepted, _, _)| accepted == "True"),
        "east's policy resource is gone"
    );

    // The first replica comes back on an empty disk: the API gives its state back. It stands
    // by; the second stops cleanly, giving the Lease up, and the first leads at once, dialing
    // the Link it never saw on its own disk.
    std::fs::remove_file(east.gateway.dir.join("state.json"))?;
    let _ = std::fs::remove_file(east.gateway.dir.join("vips.json"));
    east.gateway.start(&mesh)?;
    standby.stop()?;
    wait_for(
        Duration::from_secs(5),
        "the first replica leading again",
        || {
            Ok((runtime.block_on(lease_holder(&east.client)) == first
                && runtime.block_on(leading_pods(&east.client))? == ["east-a"])
            .then_some(()))
        },
    )
    .with_context(|| east.gateway.log_tail())?;
    wait_for(
        Duration::from_secs(10),
        "east connected to west again",
        || Ok((mesh.link_state("west", "east")? == "connected").then_some(())),
    )
    .with_context(|| east.gateway.log_tail())?;
    runtime.block_on(publish(&west.client, "cart", true))?;
    wait_imported_from_west(&runtime, &east.client, "cart", Duration::from_secs(10))
        .with_context(|| east.gateway.log_tail())?;
    anyhow::ensure!(
        runtime.block_on(import_ips(&east.client, "api")) == ips,
        "shop/api kept its virtual address across the empty disk"
    );
    anyhow::ensure!(
        runtime
            .block_on(imported_from(&east.client, "web"))
            .is_some(),
        "shop/web was lost"
    );
    let policies = mesh
        .ctl("east", &["get", "policies", "-o", "json"])
        .success()?;
    anyhow::ensure!(
        policies.contains("no-west-to-api"),
        "east's set lost the deny across the empty disk: {policies}"
    );
    Ok(())
}

#[test]
fn a_replica_that_no_peer_reached_hands_its_flows_to_one_that_has_the_connection() -> Result<()> {
    let Some((mesh, runtime, west, mut east)) = two_clusters()? else {
        return Ok(());
    };
    // West dials east's first replica: the second has no connection with west.
    link_with_resources(&mesh, &runtime, &west.client, "east")?;
    let _api = serve_api(&mesh, &runtime, &west)?;
    let started = Instant::now();
    let mut second = east.gateway.replica("b")?;
    second.start(&mesh)?;
    let (_web, proxy) = web_sidecar(&mesh, &runtime, &east.client, &second)?;
    wait_for(
        Duration::from_secs(15),
        "shop/api through east's second replica",
        || Ok((answer(proxy, API) == 200).then_some(())),
    )
    .with_context(|| second.log_tail())?;
    eprintln!(
        "first answer through the second replica after {:?}",
        started.elapsed()
    );
    anyhow::ensure!(
        mesh.link_view("west", "east")?["replicas"] == 1,
        "west reached more than one replica of east"
    );
    // The second replica counted the flow, and the first carried it to west.
    anyhow::ensure!(
        flows_to_west(&second)? >= 1.0 && flows_to_west(&east.gateway)? >= 1.0,
        "the flow did not go through both replicas"
    );
    // With the first replica gone, there is nobody to hand flows to: the refusal says so.
    east.gateway.stop()?;
    eprintln!("first replica stopped after {:?}", started.elapsed());
    wait_for(
        Duration::from_secs(20),
        "shop/api refused through the second replica",
        || Ok((answer(proxy, API) != 200).then_some(())),
    )?;
    eprintln!("refused after {:?}", started.elapsed());
    second.stop()?;
    Ok(())
}

/// A kubeconfig for service account strait-system/strait-gateway of `plane`.
async fn gateway_kubeconfig(plane: &ControlPlane, client: &Client) -> Result<std::path::PathBuf> {
    let account = strait_gateway::kubernetes::rbac::NAME;
    service_account(client, "strait-system", account).await?;
    account_kubeconfig(plane, client, "strait-system", account).await
}

#[test]
fn a_gateway_without_its_rights_names_what_it_lacks_and_works_once_deploy_rbac_is_applied()
-> Result<()> {
    if let Err(why) = binaries() {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    let mesh = Mesh::new()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let plane = ControlPlane::start("west", mesh.dir.path())?;
    let admin = runtime.block_on(plane.client())?;
    runtime.block_on(prepare(&admin))?;
    let kubeconfig = runtime.block_on(gateway_kubeconfig(&plane, &admin))?;
    let mut gateway = mesh.kubernetes_gateway("west", &kubeconfig)?;
    gateway.launch(&mesh)?;

    // Its service account exists but holds no rights: not ready, naming who lacks what.
    wait_for(
        Duration::from_secs(20),
        "a readiness that names the refusal",
        || {
            let Ok((status, body)) = strait_tests::http_get(gateway.admin, "/readyz") else {
                return Ok(None);
            };
            Ok((status == 503
                && body.contains("system:serviceaccount:strait-system:strait-gateway")
                && body.contains("cannot list resource \"services\""))
            .then_some(()))
        },
    )
    .with_context(|| gateway.log_tail())?;
    // `strait check` names the rights, asked of the API as the gateway.
    let check = |more: &[&str]| {
        let mut args = vec!["check", "--kubeconfig"];
        let admin_kubeconfig = plane.kubeconfig.to_string_lossy().into_owned();
        args.push(&admin_kubeconfig);
        args.extend_from_slice(more);
        mesh.ctl("west", &args)
    };
    let said = check(&[]);
    for line in [
        "[fail] the gateway lacks ",
        "list services, watch services",
        "hint: bind the gateway's service account in namespace strait-system",
        "[ok] strait's 9 CRDs are installed, established and served",
        "[ok] the gateway serves no sidecar injector, and no webhook calls one",
    ] {
        anyhow::ensure!(
            !said.ok && said.stdout.contains(line),
            "no {line:?} in {said:?}"
        );
    }

    // deploy/rbac.yaml, as `kubectl apply -f deploy/rbac.yaml` applies it: ready on its own.
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rbac.yaml"),
    )?;
    let apply = kube::api::PatchParams::apply("strait-tests").force();
    for document in text.split("---\n") {
        let value: serde_json::Value = serde_saphyr::from_str(document)?;
        let object: DynamicObject = serde_json::from_value(value.clone())?;
        let gvk = kube::api::GroupVersionKind::try_from(object.types.as_ref().context("types")?)?;
        let (resource, _) = runtime.block_on(kube::discovery::pinned_kind(&admin, &gvk))?;
        let api: Api<DynamicObject> = match object.namespace() {
            Some(ns) => Api::namespaced_with(admin.clone(), &ns, &resource),
            None => Api::all_with(admin.clone(), &resource),
        };
        runtime.block_on(api.patch(
            &object.name_any(),
            &apply,
            &kube::api::Patch::Apply(&value),
        ))?;
    }
    let granted = Instant::now();
    wait_for(
        Duration::from_secs(60),
        "the gateway ready with its rights",
        || {
            let (status, _) = strait_tests::http_get(gateway.admin, "/readyz")?;
            Ok((status == 200).then_some(()))
        },
    )
    .with_context(|| {
        format!(
            "{:?}\n{}",
            strait_tests::http_get(gateway.admin, "/readyz"),
            gateway.log_tail()
        )
    })?;
    eprintln!("ready {:?} after the roles were applied", granted.elapsed());
    // The check passes (a gateway linked to nobody is only a warning), its rights all held.
    let rights = strait_gateway::kubernetes::rbac::rights().len();
    wait_for(Duration::from_secs(10), "strait check passing", || {
        let said = check(&[]);
        Ok((said.ok
            && said.stdout.contains(&format!(
                "[ok] the gateway holds the {rights} rights its roles grant"
            )))
        .then_some(()))
    })
    .with_context(|| format!("{:?}", check(&[])))?;

    // With exactly those rights it does its work: an export's status, a policy's status, the
    // Lease and the durable state.
    runtime.block_on(publish(&admin, "api", true))?;
    wait_for(Duration::from_secs(5), "shop/api exported", || {
        Ok(runtime
            .block_on(validity(&admin, "api"))
            .filter(|v| v == &("True".to_owned(), "Exported".to_owned()))
            .map(|_| ()))
    })
    .with_context(|| gateway.log_tail())?;
    runtime.block_on(kubectl_create(&admin, NO_WEST_TO_API))?;
    wait_for(Duration::from_secs(5), "the policy accepted", || {
        Ok(runtime
            .block_on(policy_status(&admin, "no-west-to-api"))
            .filter(|(accepted, _, origin)| accepted == "True" && origin == "west")
            .map(|_| ()))
    })
    .with_context(|| gateway.log_tail())?;
    let pid = gateway.pid().context("the gateway's process")?;
    anyhow::ensure!(
        runtime
            .block_on(lease_holder(&admin))
            .is_some_and(|holder| holder.ends_with(&format!("-{pid}"))),
        "the gateway holds the Lease"
    );
    wait_for(Duration::from_secs(5), "the durable state written", || {
        Ok(runtime
            .block_on(
                Api::<k8s_openapi::api::core::v1::Secret>::namespaced(
                    admin.clone(),
                    "strait-system",
                )
                .get_opt("strait-gateway-state"),
            )?
            .map(|_| ()))
    })?;

    // A CRD deleted under the gateway: named, and the check fails.
    runtime.block_on(
        Api::<CustomResourceDefinition>::all(admin.clone())
            .delete("links.strait.dev", &DeleteParams::default()),
    )?;
    let said = check(&["-o", "json"]);
    let report: serde_json::Value =
        serde_json::from_str(&said.stdout).with_context(|| format!("{said:?}"))?;
    anyhow::ensure!(
        !said.ok
            && report["checks"].as_array().into_iter().flatten().any(|c| {
                c["status"] == "fail" && c["description"] == "CRD links.strait.dev is installed"
            }),
        "{said:?}"
    );
    gateway.stop()?;
    Ok(())
}

#[test]
fn a_gateway_that_starts_on_an_empty_disk_while_its_api_is_down_says_so_and_takes_its_state_in_later()
-> Result<()> {
    let Some((mesh, runtime, mut west, east)) = two_clusters()? else {
        return Ok(());
    };
    link_with_resources(&mesh, &runtime, &east.client, "west")?;
    runtime.block_on(publish(&west.client, "api", true))?;
    wait_for(Duration::from_secs(5), "shop/api imported in east", || {
        Ok(runtime
            .block_on(imported_from(&east.client, "api"))
            .map(|_| ()))
    })?;
    // West admitted east's token: its durable state in the API says so.
    let secrets =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(west.client.clone(), "strait-system");
    wait_for(
        Duration::from_secs(5),
        "west's durable state naming east",
        || {
            let secret = runtime.block_on(secrets.get_opt("strait-gateway-state"))?;
            let state = secret
                .and_then(|s| s.data)
                .and_then(|d| d.get("state.json").cloned())
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default();
            Ok(state.contains("\"east\"").then_some(()))
        },
    )?;

    // West comes back on an empty disk while its API server is down: it starts, and says why
    // it is not ready.
    west.gateway.stop()?;
    std::fs::remove_file(west.gateway.dir.join("state.json"))?;
    let _ = std::fs::remove_file(west.gateway.dir.join("vips.json"));
    west.plane.stop_apiserver();
    west.gateway.launch(&mesh)?;
    wait_for(
        Duration::from_secs(20),
        "west not ready, naming its API",
        || {
            let Ok((status, body)) = strait_tests::http_get(west.gateway.admin, "/readyz") else {
                return Ok(None);
            };
            Ok((status == 503 && body.contains("kubernetes")).then_some(()))
        },
    )
    .with_context(|| west.gateway.log_tail())?;

    // The API is back: west reads what it kept, is ready, and east's link comes back.
    west.plane.start_apiserver()?;
    wait_for(Duration::from_secs(40), "west ready again", || {
        let (status, _) = strait_tests::http_get(west.gateway.admin, "/readyz")?;
        Ok((status == 200).then_some(()))
    })
    .with_context(|| west.gateway.log_tail())?;
    anyhow::ensure!(
        west.gateway
            .log()
            .contains("durable state taken in from the Kubernetes API"),
        "west never took its stored state in:\n{}",
        west.gateway.log_tail()
    );
    wait_for(Duration::from_secs(20), "east linked to west again", || {
        Ok((mesh.link_state("east", "west")? == "connected").then_some(()))
    })
    .with_context(|| west.gateway.log_tail())?;
    anyhow::ensure!(
        runtime
            .block_on(imported_from(&east.client, "api"))
            .is_some(),
        "east lost shop/api\nwest: {}\neast: {}",
        west.gateway.log_tail(),
        east.gateway.log_tail()
    );
    Ok(())
}

#[test]
fn an_export_waits_for_its_namespace_in_the_importing_cluster_and_arrives_with_it() -> Result<()> {
    let Some((mesh, runtime, west, east)) = two_clusters()? else {
        return Ok(());
    };
    link_with_resources(&mesh, &runtime, &east.client, "west")?;
    // Namespace tools exists in west only: the export is not imported into east, and the
    // gateway creates no namespace.
    let namespace = |name: &str| -> Result<k8s_openapi::api::core::v1::Namespace> {
        Ok(serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
        }))?)
    };
    let namespaces =
        |client: &Client| Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    runtime
        .block_on(namespaces(&west.client).create(&PostParams::default(), &namespace("tools")?))?;
    runtime.block_on(publish_in(
        &west.client,
        "tools",
        "build",
        "10.1.0.9:9090".parse()?,
        true,
    ))?;
    let imported = |client: &Client| {
        runtime
            .block_on(Api::<ServiceImport>::namespaced(client.clone(), "tools").get_opt("build"))
            .ok()
            .flatten()
            .is_some()
    };
    wait_for(Duration::from_secs(5), "tools/build valid in west", || {
        Ok(runtime
            .block_on(condition_in(&west.client, "tools", "build", "Valid"))
            .filter(|(status, _, _)| status == "True")
            .map(|_| ()))
    })?;
    std::thread::sleep(Duration::from_secs(1));
    anyhow::ensure!(
        !imported(&east.client),
        "imported into a namespace east lacks"
    );
    anyhow::ensure!(
        runtime
            .block_on(namespaces(&east.client).get_opt("tools"))?
            .is_none(),
        "the gateway created a namespace"
    );

    // The namespace is created in east: the import follows at once, not at a retry.
    runtime
        .block_on(namespaces(&east.client).create(&PostParams::default(), &namespace("tools")?))?;
    let created = Instant::now();
    wait_for(
        Duration::from_secs(2),
        "tools/build imported into east",
        || Ok(imported(&east.client).then_some(())),
    )
    .with_context(|| east.gateway.log_tail())?;
    eprintln!(
        "imported {:?} after its namespace appeared",
        created.elapsed()
    );
    Ok(())
}

#[test]
fn a_pod_created_where_injection_is_on_gets_the_sidecar_strait_inject_gives_and_a_bad_one_is_refused()
-> Result<()> {
    if let Err(why) = binaries() {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    let mesh = Mesh::new()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut west = KubeCluster::start(&mesh, &runtime, "west")?;
    west.serve_injector(&mesh, &runtime)?;
    runtime.block_on(namespace_with(
        &west.client,
        "store",
        serde_json::json!({"strait.dev/inject": "enabled"}),
    ))?;
    runtime.block_on(namespace_with(&west.client, "plain", serde_json::json!({})))?;
    let pods = |namespace: &str| {
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(west.client.clone(), namespace)
    };
    // Until the gateway has seen the labelled namespace, a pod may pass untouched: retried.
    let stored = wait_for(Duration::from_secs(10), "a pod given its sidecar", || {
        let _ = runtime.block_on(pods("store").delete("web", &DeleteParams::default()));
        let created = runtime.block_on(pods("store").create(
            &PostParams::default(),
            &serde_json::from_value(pod("store", "web", 8080))?,
        ))?;
        Ok(
            serde_json::to_value(&created)?["spec"]["containers"][0]["name"]
                .eq("strait-proxy")
                .then(|| serde_json::to_value(&created))
                .transpose()?,
        )
    })
    .with_context(|| west.gateway.log_tail())?;
    // What `strait inject` prints for the same pod.
    let file = mesh.file(
        "web.yaml",
        &serde_json::to_string(&pod("store", "web", 8080))?,
    )?;
    let bundle = mesh.trust.join("bundle.pem");
    let printed = mesh
        .cli(
            &[
                "inject",
                "--bundle",
                &bundle.to_string_lossy(),
                "--image",
                "strait:test",
                "--gateway",
                &west.gateway.api.to_string(),
                "-f",
            ],
            &[&file],
        )
        .success()?;
    let printed: serde_json::Value = serde_saphyr::from_str(printed.trim_start_matches("---\n"))?;
    for (list, name) in [
        ("containers", "strait-proxy"),
        ("initContainers", "strait-init"),
    ] {
        let find = |pod: &serde_json::Value| {
            pod["spec"][list]
                .as_array()
                .and_then(|l| l.iter().find(|c| c["name"] == name).cloned())
                .unwrap_or_default()
        };
        let (stored, printed) = (find(&stored), find(&printed));
        for field in ["args", "image", "securityContext", "env"] {
            anyhow::ensure!(
                stored[field] == printed[field],
                "{name}.{field}: the webhook stored {} but strait inject prints {}",
                stored[field],
                printed[field]
            );
        }
    }
    anyhow::ensure!(
        stored["metadata"]["annotations"]["strait.dev/inject"] == "enabled",
        "{stored}"
    );
    // A namespace without the label: the pod is left as it was.
    let plain = runtime.block_on(pods("plain").create(
        &PostParams::default(),
        &serde_json::from_value(pod("plain", "web", 8080))?,
    ))?;
    anyhow::ensure!(plain.spec.map(|s| s.containers.len()) == Some(1));
    // A pod whose port is the sidecar's: refused, naming the field.
    let refused = runtime
        .block_on(pods("store").create(
            &PostParams::default(),
            &serde_json::from_value(pod("store", "bad", 15006))?,
        ))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    anyhow::ensure!(
        refused.contains(
            "strait cannot add its sidecar: spec.containers[0].ports[0].containerPort: 15006"
        ),
        "{refused}"
    );

    // `strait check` verifies the injector's certificate as the API server does...
    let kubeconfig = west.plane.kubeconfig.to_string_lossy().into_owned();
    let said = mesh.ctl("west", &["check", "--kubeconfig", &kubeconfig]);
    let trusted = "[ok] webhook inject.strait.dev of strait-injector trusts the injector's certificate for 127.0.0.1";
    anyhow::ensure!(said.ok && said.stdout.contains(trusted), "{said:?}");
    // ...and names a webhook whose CA is not the one that signed it.
    let mut other = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
    other
        .distinguished_name
        .push(rcgen::DnType::CommonName, "another CA");
    let other = other.self_signed(&rcgen::KeyPair::generate()?)?;
    let webhooks =
        Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
            west.client.clone(),
        );
    let mut configuration = runtime.block_on(webhooks.get("strait-injector"))?;
    for webhook in configuration.webhooks.iter_mut().flatten() {
        webhook.client_config.ca_bundle = Some(k8s_openapi::ByteString(other.pem().into_bytes()));
    }
    runtime.block_on(webhooks.replace(
        "strait-injector",
        &PostParams::default(),
        &configuration,
    ))?;
    let said = mesh.ctl("west", &["check", "--kubeconfig", &kubeconfig]);
    anyhow::ensure!(
        !said.ok
            && said.stdout.contains(
                "[fail] webhook inject.strait.dev of strait-injector trusts the injector's certificate for 127.0.0.1: invalid peer certificate: UnknownIssuer"
            ),
        "{said:?}"
    );

    // A webhook calling a Service, as the chart's do: the certificate must name the Service,
    // and the Service must exist with a ready endpoint.
    runtime.block_on(webhooks.delete("strait-injector", &DeleteParams::default()))?;
    let ca = std::fs::read_to_string(west.gateway.dir.join("webhook.crt"))?;
    let by_service: k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "strait-injector-strait-system"},
            "webhooks": [{
                "name": "pod.inject.strait.dev",
                "clientConfig": {
                    "service": {"name": "strait-injector", "namespace": "strait-system",
                                "path": "/mutate", "port": 443},
                    "caBundle": k8s_openapi::ByteString(ca.into_bytes())},
                "objectSelector": {"matchLabels": {"strait.dev/inject": "enabled"}},
                "failurePolicy": "Ignore", "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
            }],
        }))?;
    runtime.block_on(webhooks.create(&PostParams::default(), &by_service))?;
    let what = "webhook pod.inject.strait.dev of strait-injector-strait-system";
    let said = mesh.ctl("west", &["check", "--kubeconfig", &kubeconfig]);
    for line in [
        format!(
            "[fail] {what} trusts the injector's certificate for strait-injector.strait-system.svc: invalid peer certificate: certificate not valid for name"
        ),
        format!("[fail] {what} calls Service strait-system/strait-injector, which does not exist"),
    ] {
        anyhow::ensure!(
            !said.ok && said.stdout.contains(&line),
            "no {line:?} in {said:?}"
        );
    }
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "strait-injector", "namespace": "strait-system"},
        "spec": {"ports": [{"name": "https", "port": 443}]},
    }))?;
    runtime.block_on(
        Api::<Service>::namespaced(west.client.clone(), "strait-system")
            .create(&PostParams::default(), &service),
    )?;
    let said = mesh.ctl("west", &["check", "--kubeconfig", &kubeconfig]);
    let line = format!(
        "[fail] {what} calls Service strait-system/strait-injector, which has no ready endpoint"
    );
    anyhow::ensure!(said.stdout.contains(&line), "no {line:?} in {said:?}");
    let endpoints: k8s_openapi::api::core::v1::Endpoints = serde_json::from_value(
        serde_json::json!({
            "metadata": {"name": "strait-injector", "namespace": "strait-system"},
            "subsets": [{"addresses": [{"ip": "10.0.0.7"}], "ports": [{"name": "https", "port": 443}]}],
        }),
    )?;
    runtime.block_on(
        Api::<k8s_openapi::api::core::v1::Endpoints>::namespaced(
            west.client.clone(),
            "strait-system",
        )
        .create(&PostParams::default(), &endpoints),
    )?;
    let said = mesh.ctl("west", &["check", "--kubeconfig", &kubeconfig]);
    let line =
        format!("[ok] {what} calls Service strait-system/strait-injector (1 ready endpoint)");
    anyhow::ensure!(said.stdout.contains(&line), "no {line:?} in {said:?}");
    Ok(())
}

//! A root rotation under traffic, through the contract operators use: `strait demo` runs east
//! and west with live cross-cluster traffic, and `strait trust rotate add`, `reissue` and
//! `retire` move the whole mesh to a new root, live: no gateway or sidecar restarts, every link
//! stays connected, and no request of the demo fails.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use strait_tests::load::Load;
use strait_tests::{Mesh, Process, wait_for};

/// The tests of this file run one at a time: the demo's check that no request fails must not
/// share this machine's two cores with an API server starting.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_root_is_rotated_under_traffic_with_no_failed_request_and_the_links_kept() -> Result<()> {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mesh = Mesh::new()?;
    let demo_dir = mesh.dir.path().join("demo");
    let args: Vec<String> = ["demo", "--duration", "40s", "-o", "json", "--dir"]
        .iter()
        .map(|s| s.to_string())
        .chain([demo_dir.display().to_string()])
        .collect();
    let demo = Process::start(&mesh, "demo", &args)?;
    ensure!(demo.started["event"] == "ready", "{}", demo.started);
    let proxy: SocketAddr = demo.started["proxies"]["east"]
        .as_str()
        .context("east's proxy")?
        .parse()?;
    // 500 requests a second from east to west for the whole rotation, besides the demo's own.
    let load = Load::start(proxy, "west.api.shop.svc.clusterset.local", 500);
    let started = Instant::now();
    // The load runs a while before, between and after the stages: old, mixed and new trust.
    let settle = || std::thread::sleep(Duration::from_secs(3));
    settle();
    let trust = demo_dir.join("trust");
    let next = demo_dir.join("trust-2");
    let path = |p: &std::path::Path| p.display().to_string();

    // (a) The new root beside the old one, in every gateway and context.
    let said = mesh
        .cli(
            &[
                "trust",
                "rotate",
                "add",
                "--trust",
                &path(&trust),
                "--new",
                &path(&next),
            ],
            &[],
        )
        .success()
        .with_context(|| demo.log_tail())?;
    eprintln!("add after {:?}:\n{said}", started.elapsed());
    ensure!(said.lines().count() == 2, "one line per gateway: {said}");
    ensure!(
        said.lines().all(|l| l.contains("trusts 2 root(s)")),
        "{said}"
    );

    settle();
    // (b) Each issuer re-signed by the new root; every workload renews under it.
    let said = mesh
        .cli(
            &["trust", "rotate", "reissue", "--trust", &path(&next)],
            &[],
        )
        .success()
        .with_context(|| demo.log_tail())?;
    eprintln!("reissue after {:?}:\n{said}", started.elapsed());
    ensure!(
        said.matches("re-signed by root").count() == 2
            && said
                .matches("every workload holds a certificate of the new issuer")
                .count()
                == 2,
        "{said}"
    );

    settle();
    // (c) The old root leaves every bundle.
    let said = mesh
        .cli(
            &["trust", "rotate", "retire", "--trust", &path(&trust)],
            &[],
        )
        .success()
        .with_context(|| demo.log_tail())?;
    eprintln!("retire after {:?}:\n{said}", started.elapsed());
    ensure!(
        said.lines()
            .filter(|l| l.contains("trusts 1 root(s)"))
            .count()
            == 2,
        "{said}"
    );

    settle();
    let (sent, failed, last_failure) = load.stop();
    eprintln!(
        "rotation took {:?}: {sent} requests from east to west, {failed} failed",
        started.elapsed()
    );
    ensure!(sent > 4_000, "the load did not run: {sent} requests");
    ensure!(
        failed == 0,
        "{failed} of {sent} requests failed; the last: {last_failure}"
    );

    // Each gateway's API now verifies against the new root alone (the contexts' bundles are
    // that root), and the link is still connected.
    let new_root = std::fs::read_to_string(next.join("root.crt"))?;
    for cluster in ["east", "west"] {
        let links = mesh
            .ctl(cluster, &["get", "links", "-o", "json"])
            .success()?;
        ensure!(links.contains("connected"), "{cluster}: {links}");
    }
    let contexts: Value = serde_saphyr::from_str(&std::fs::read_to_string(&mesh.config)?)?;
    for context in contexts["contexts"].as_array().into_iter().flatten() {
        let bundle = std::fs::read_to_string(context["bundle"].as_str().unwrap_or_default())?;
        ensure!(
            bundle.trim() == new_root.trim(),
            "context {} still trusts more than the new root",
            context["name"]
        );
    }
    let check = mesh.ctl("east", &["check", "-o", "json"]);
    let report: Value =
        serde_json::from_str(&check.stdout).with_context(|| format!("{check:?}"))?;
    ensure!(check.ok, "{check:?}");
    ensure!(
        report["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["description"]
                == "the gateway trusts 1 root(s), all in this context's bundle"),
        "{}",
        check.stdout
    );

    // The demo's report: traffic flowed on every route, and none of it failed.
    let report = wait_for(Duration::from_secs(60), "the demo's report", || {
        Ok(demo
            .later_lines()
            .into_iter()
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .find(|v| v.get("traffic").is_some()))
    })?;
    let rows = report["traffic"].as_array().context("traffic")?;
    ensure!(!rows.is_empty(), "{report}");
    for row in rows {
        ensure!(
            row["requests"].as_u64().unwrap_or(0) > 0 && row["success_rate"] == 1.0,
            "a route failed during the rotation: {row}"
        );
    }
    ensure!(
        report["links"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|l| l["state"] == "connected"),
        "{report}"
    );
    Ok(())
}

/// The fingerprints of the certificates of `kind` (root, issuer) a gateway's metrics show.
fn held(gateway: &strait_tests::Gateway, kind: &str) -> Result<Vec<String>> {
    let text = gateway.metrics()?;
    let label = format!("certificate=\"{kind}\"");
    let mut found: Vec<String> = text
        .lines()
        .filter(|l| {
            l.starts_with("strait_certificate_expiry_timestamp_seconds{") && l.contains(&label)
        })
        .filter_map(|l| l.split("fingerprint=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect();
    found.sort();
    Ok(found)
}

/// In Kubernetes mode a rotation outlives the pod that took it: each stage is written into
/// the credentials Secret, and a gateway that starts on an empty disk with a mount the kubelet
/// has not refreshed yet takes the Secret's later generation live once the mount shows it,
/// all three stages at once.
#[test]
fn a_rotation_in_kubernetes_mode_is_written_into_the_credentials_secret_and_taken_from_its_mount()
-> Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, PostParams};
    use strait_tests::kube::{KubeCluster, binaries};
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(why) = binaries() {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    let mesh = Mesh::new()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut east = KubeCluster::start(&mesh, &runtime, "east")?;
    east.gateway.stop()?;
    // The credentials as the chart mounts them: a Secret, and its files in a folder.
    let files = ["bundle.pem", "issuer.crt", "issuer.key", "link.key"];
    let mount = east.gateway.dir.join("credentials");
    std::fs::create_dir_all(&mount)?;
    let mut data = std::collections::BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(east.gateway.dir.join(file))?;
        std::fs::write(mount.join(file), &text)?;
        data.insert(file.to_owned(), k8s_openapi::ByteString(text.into_bytes()));
    }
    let secrets = Api::<Secret>::namespaced(east.client.clone(), "strait-system");
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("strait-cluster-credentials".into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    runtime.block_on(secrets.create(&PostParams::default(), &secret))?;
    let config = east.gateway.dir.join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "{}credentialsDir: {}\n",
            std::fs::read_to_string(&config)?,
            mount.display()
        ),
    )?;
    east.gateway.set_section(
        "kubernetes",
        &format!(
            "  kubeconfig: {}\n  credentialsSecret: strait-cluster-credentials",
            east.plane.kubeconfig.display()
        ),
    )?;
    east.gateway.start(&mesh)?;
    let old_root = held(&east.gateway, "root")?;

    // The three stages, as operators run them.
    let next = mesh.dir.path().join("trust-2");
    let path = |p: &std::path::Path| p.display().to_string();
    let stages: [Vec<String>; 3] = [
        vec![
            "add".into(),
            "--trust".into(),
            path(&mesh.trust),
            "--new".into(),
            path(&next),
        ],
        vec!["reissue".into(), "--trust".into(), path(&next)],
        vec!["retire".into(), "--trust".into(), path(&mesh.trust)],
    ];
    for stage in &stages {
        let mut args = vec!["trust", "rotate"];
        args.extend(stage.iter().map(String::as_str));
        mesh.cli(&args, &[]).success()?;
    }
    let new_root = held(&east.gateway, "root")?;
    let new_issuer = held(&east.gateway, "issuer")?;
    ensure!(new_root != old_root && new_root.len() == 1, "{new_root:?}");

    // Each stage reached the Secret; the last one is generation 3.
    let stored = wait_for(
        Duration::from_secs(10),
        "generation 3 in the Secret",
        || {
            let secret = runtime.block_on(secrets.get("strait-cluster-credentials"))?;
            let data = secret.data.unwrap_or_default();
            let text = |key: &str| {
                data.get(key)
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    .unwrap_or_default()
            };
            Ok((text("generation").trim() == "3").then(|| {
                files
                    .iter()
                    .map(|f| (f.to_string(), text(f)))
                    .collect::<std::collections::BTreeMap<_, _>>()
            }))
        },
    )
    .with_context(|| east.gateway.log_tail())?;
    let rotated = east.gateway.dir.join("trust");
    ensure!(
        stored["bundle.pem"] == std::fs::read_to_string(rotated.join("bundle.pem"))?
            && stored["issuer.crt"] == std::fs::read_to_string(rotated.join("issuer.crt"))?,
        "the Secret does not hold the rotated bundle and issuer"
    );

    // A pod rescheduled: an empty disk, and a mount the kubelet has not refreshed yet. It
    // starts with the credentials as first issued...
    east.gateway.stop()?;
    std::fs::remove_dir_all(&rotated)?;
    east.gateway.start(&mesh)?;
    ensure!(held(&east.gateway, "root")? == old_root);
    // ...and takes generation 3 once the mount shows it (the kubelet writes every key).
    for (file, text) in &stored {
        std::fs::write(mount.join(file), text)?;
    }
    std::fs::write(mount.join("generation"), "3\n")?;
    let taken = Instant::now();
    wait_for(
        Duration::from_secs(10),
        "the new root and issuer taken",
        || {
            Ok((held(&east.gateway, "root")? == new_root
                && held(&east.gateway, "issuer")? == new_issuer)
                .then_some(()))
        },
    )
    .with_context(|| east.gateway.log_tail())?;
    eprintln!("generation 3 taken from the mount in {:?}", taken.elapsed());
    // The operator's context (new root only) reaches it again.
    mesh.ctl("east", &["get", "links"]).success()?;

    // Another replica's change, in the Secret but not in this replica's mount yet: a stage
    // sent to this replica is refused, since it would start from older trust.
    let patch =
        serde_json::json!({"data": {"generation": k8s_openapi::ByteString(b"4\n".to_vec())}});
    runtime.block_on(secrets.patch(
        "strait-cluster-credentials",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    ))?;
    let refused = mesh.cli(
        &[
            "trust",
            "rotate",
            "add",
            "--trust",
            &path(&next),
            "--new",
            &path(&mesh.dir.path().join("trust-3")),
        ],
        &[],
    );
    ensure!(
        !refused.ok
            && refused
                .stderr
                .contains("this replica holds generation 3 of the credentials, Secret strait-cluster-credentials generation 4"),
        "{refused:?}"
    );
    Ok(())
}

//! A root rotation under traffic, through the contract operators use: `strait demo` runs east
//! and west with live cross-cluster traffic, and `strait trust rotate add`, `reissue` and
//! `retire` move the whole mesh to a new root, live: no gateway or sidecar restarts, every link
//! stays connected, and no request of the demo fails.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use strait_tests::{Mesh, Process, wait_for};

#[test]
fn a_root_is_rotated_under_traffic_with_no_failed_request_and_the_links_kept() -> Result<()> {
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

/// Paced HTTP/1.1 requests on keep-alive connections through a sidecar's proxy, counting each
/// answer that is not a 200 (and each connection error) as a failure.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    last_failure: Arc<std::sync::Mutex<String>>,
    thread: std::thread::JoinHandle<()>,
}

impl Load {
    const CONNECTIONS: u32 = 8;

    fn start(proxy: SocketAddr, host: &str, per_second: u32) -> Self {
        let (stop, sent, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let last_failure = Arc::new(std::sync::Mutex::new(String::new()));
        let every = Duration::from_secs(1) * Self::CONNECTIONS / per_second;
        let host = host.to_owned();
        let (s, n, f, l) = (
            stop.clone(),
            sent.clone(),
            failed.clone(),
            last_failure.clone(),
        );
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the load");
            runtime.block_on(async move {
                let mut tasks = Vec::new();
                for _ in 0..Self::CONNECTIONS {
                    let (s, n, f, l, host) =
                        (s.clone(), n.clone(), f.clone(), l.clone(), host.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut sender = None;
                        let mut tick = tokio::time::interval(every);
                        while !s.load(Ordering::SeqCst) {
                            tick.tick().await;
                            n.fetch_add(1, Ordering::SeqCst);
                            match request(&mut sender, proxy, &host).await {
                                Ok(200) => {}
                                Ok(status) => {
                                    f.fetch_add(1, Ordering::SeqCst);
                                    *l.lock().unwrap_or_else(|p| p.into_inner()) =
                                        format!("status {status}");
                                }
                                Err(e) => {
                                    f.fetch_add(1, Ordering::SeqCst);
                                    *l.lock().unwrap_or_else(|p| p.into_inner()) = format!("{e:#}");
                                    sender = None;
                                }
                            }
                        }
                    }));
                }
                for task in tasks {
                    let _ = task.await;
                }
            });
        });
        Self {
            stop,
            sent,
            failed,
            last_failure,
            thread,
        }
    }

    /// Stops; returns the requests sent, those that failed and the last failure.
    fn stop(self) -> (u64, u64, String) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
        let last = self
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (
            self.sent.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            last,
        )
    }
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// One GET on the connection, made first when there is none.
async fn request(sender: &mut Option<Sender>, proxy: SocketAddr, host: &str) -> Result<u16> {
    use http_body_util::BodyExt;
    if sender.is_none() {
        let tcp = tokio::net::TcpStream::connect(proxy).await?;
        let (made, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        *sender = Some(made);
    }
    let sender = sender.as_mut().context("connected")?;
    let request = hyper::Request::get(format!("http://{host}/"))
        .header("host", host)
        .body(http_body_util::Empty::new())?;
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        Ok::<_, anyhow::Error>(status)
    })
    .await
    .context("no answer within 10 s")??;
    Ok(answer)
}

//! Paced HTTP/1.1 load through a sidecar's proxy port, for tests and benchmarks that need
//! traffic at a known rate while something else happens (a rotation, a restart), counting every
//! request that did not get a 200.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

/// Paced HTTP/1.1 requests on keep-alive connections through a sidecar's proxy, counting each
/// answer that is not a 200 (and each connection error) as a failure.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    last_failure: Arc<std::sync::Mutex<String>>,
    thread: std::thread::JoinHandle<()>,
}

impl Load {
    /// Starts `per_second` requests a second to `host` through `proxy`, on 8 connections.
    pub fn start(proxy: SocketAddr, host: &str, per_second: u32) -> Self {
        Self::start_on(proxy, host, per_second, 8)
    }

    /// Starts `per_second` requests a second on `connections` keep-alive connections.
    pub fn start_on(proxy: SocketAddr, host: &str, per_second: u32, connections: u32) -> Self {
        let (stop, sent, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let last_failure = Arc::new(std::sync::Mutex::new(String::new()));
        let every = Duration::from_secs(1) * connections / per_second.max(1);
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
                for _ in 0..connections {
                    let (s, n, f, l, host) =
                        (s.clone(), n.clone(), f.clone(), l.clone(), host.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut sender = None;
                        let mut tick = tokio::time::interval(every);
                        // Late requests are not sent in a burst to catch up: the rate is a
                        // ceiling, and the counts say what was sent.
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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

    /// The requests sent and failed so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }

    /// Stops; returns the requests sent, those that failed and the last failure.
    pub fn stop(self) -> (u64, u64, String) {
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

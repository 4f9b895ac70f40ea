//! Caps on what a stranger can make a process hold: each [`Limit`] is named by the setting
//! that sets it, counts every refusal under that name (`strait_limit_refusals_total{limit}`)
//! and says so in the log; a [`Cap`] bounds what is held at once (the connections a listener
//! keeps open, the mirror copies in flight).

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The metric every process exports for its limits (registered as `limit_refusals_total` in
/// a registry whose prefix is `strait`).
pub const REFUSALS_METRIC: &str = "strait_limit_refusals_total";

/// How often a limit that keeps being hit says so in the log.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The refusal counter of a process, labelled by the setting whose limit was hit.
#[derive(Clone)]
pub struct Refusals(IntCounterVec);

impl Refusals {
    /// The counter, registered in `registry` (whose prefix is `strait`).
    pub fn register(registry: &Registry) -> Self {
        let counter = IntCounterVec::new(
            Opts::new(
                "limit_refusals_total",
                "Connections, requests or messages refused because a limit was reached, by the \
                 setting that sets the limit.",
            ),
            &["limit"],
        )
        .expect("a constant metric definition is valid");
        registry
            .register(Box::new(counter.clone()))
            .expect("the refusal counter is registered once per registry");
        Self(counter)
    }

    /// A limit named `setting` (the flag or config key an operator changes), at `max`.
    pub fn limit(&self, setting: &'static str, max: u64) -> Limit {
        Limit {
            setting,
            max,
            refused: self.0.with_label_values(&[setting]),
            warned: Arc::new(Mutex::new(None)),
        }
    }
}

/// One limit: its setting, its value, and its refusals.
#[derive(Clone, Debug)]
pub struct Limit {
    setting: &'static str,
    max: u64,
    refused: IntCounter,
    warned: Arc<Mutex<Option<Instant>>>,
}

impl Limit {
    /// The limit's value.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Whether `amount` goes over the limit; when it does, the refusal is counted.
    pub fn exceeded_by(&self, amount: u64, what: &str) -> bool {
        let over = amount > self.max;
        if over {
            self.refuse(what);
        }
        over
    }

    /// Counts one refusal, and logs it (at most once per 10 s per limit, so that a flood
    /// does not become a flood of logs).
    pub fn refuse(&self, what: &str) {
        self.refused.inc();
        let now = Instant::now();
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
            *warned = Some(now);
            tracing::warn!(
                limit = self.setting,
                max = self.max,
                refused = self.refused.get(),
                what,
                "limit reached: refused (counted in {REFUSALS_METRIC})"
            );
        }
    }

    /// The message a refusal carries: the setting and its value.
    pub fn reason(&self) -> String {
        format!("limit {} = {} reached", self.setting, self.max)
    }
}

/// At most `max` held at once: a connection over it is closed as soon as it is accepted, a
/// copy over it is not made, and either is counted.
#[derive(Clone, Debug)]
pub struct Cap {
    limit: Limit,
    open: Arc<Semaphore>,
}

impl Cap {
    /// A cap of `limit.max()` connections.
    pub fn new(limit: Limit) -> Self {
        let permits = usize::try_from(limit.max)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            open: Arc::new(Semaphore::new(permits)),
            limit,
        }
    }

    /// A place for `what` until the permit is dropped, or `None` (counted) when `max` are
    /// held.
    pub fn take(&self, what: impl FnOnce() -> String) -> Option<OwnedSemaphorePermit> {
        match self.open.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                self.limit.refuse(&what());
                None
            }
        }
    }

    /// A place for a connection from `remote`, as [`take`](Self::take).
    pub fn admit(&self, remote: std::net::SocketAddr) -> Option<OwnedSemaphorePermit> {
        self.take(|| format!("connection from {remote}"))
    }

    /// The next connection `listener` accepts, with its place under this cap (`None`: over the
    /// cap, counted; dropping the stream closes it). Accepting fails when the process is out
    /// of file descriptors, say: that is logged and tried again after a moment. Cancel-safe.
    pub async fn accept(
        &self,
        listener: &tokio::net::TcpListener,
    ) -> (
        tokio::net::TcpStream,
        std::net::SocketAddr,
        Option<OwnedSemaphorePermit>,
    ) {
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    return (stream, remote, self.admit(remote));
                }
                Err(error) => {
                    tracing::debug!(%error, limit = self.limit.setting, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// The limit behind the cap.
    pub fn limit(&self) -> &Limit {
        &self.limit
    }

    /// How many connections hold a place now.
    pub fn in_use(&self) -> u64 {
        let free = self.open.available_permits() as u64;
        self.limit
            .max
            .min(Semaphore::MAX_PERMITS as u64)
            .saturating_sub(free)
    }
}

/// Raises this process's soft limit on open files to its hard limit (as HAProxy and Envoy do),
/// so that the connection caps, not the file descriptors, bound what a listener holds, and
/// says in the log when the limit is still below `wanted` (the sum of the caps). Returns the
/// soft limit in force.
pub fn raise_open_files(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    // The kernel refuses an infinite file limit: 2^20 is its default ceiling (nr_open).
    let ceiling = if limit.rlim_max == libc::RLIM_INFINITY {
        1 << 20
    } else {
        limit.rlim_max
    };
    let mut soft = limit.rlim_cur;
    if soft < ceiling {
        let raised = libc::rlimit {
            rlim_cur: ceiling,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given, which lives across the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            soft = ceiling;
        }
    }
    if soft < wanted {
        tracing::warn!(
            open_files = soft,
            wanted,
            "the limit on open files is below the connection caps: past it, accepting fails (too many open files) before a cap is reached; raise the hard limit (ulimit -Hn, LimitNOFILE=)"
        );
    }
    soft
}

/// A stream that fails with `TimedOut` once it has read nothing for its idle time, and holds
/// its places under caps until it is dropped: a stranger that opens a connection and goes
/// quiet gives its place back.
pub struct IdleDeadline<S> {
    stream: S,
    /// The idle time, and the deadline it sets after the last byte read.
    idle: Option<(Duration, std::pin::Pin<Box<tokio::time::Sleep>>)>,
    places: Vec<OwnedSemaphorePermit>,
}

impl<S> IdleDeadline<S> {
    /// `stream`, closed after `idle` without a byte read (never, when `None`).
    pub fn new(stream: S, idle: Option<Duration>) -> Self {
        Self {
            stream,
            idle: idle.map(|idle| (idle, Box::pin(tokio::time::sleep(idle)))),
            places: Vec::new(),
        }
    }

    /// The stream, holding `place` until it is dropped.
    pub fn holding(mut self, place: OwnedSemaphorePermit) -> Self {
        self.places.push(place);
        self
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for IdleDeadline<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let read = std::pin::Pin::new(&mut this.stream).poll_read(cx, buf);
        let Some((idle, deadline)) = this.idle.as_mut() else {
            return read;
        };
        match read {
            std::task::Poll::Ready(result) => {
                if buf.filled().len() > before {
                    deadline.as_mut().reset(tokio::time::Instant::now() + *idle);
                }
                std::task::Poll::Ready(result)
            }
            std::task::Poll::Pending => match deadline.as_mut().poll(cx) {
                std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("nothing read for {idle:?}"),
                ))),
                std::task::Poll::Pending => std::task::Poll::Pending,
            },
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for IdleDeadline<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A listener whose connections are capped by a [`Cap`], for servers that take a
/// listener (axum): one over the cap is closed at accept, and one that reads nothing for the
/// idle time is closed.
pub struct CappedListener {
    listener: tokio::net::TcpListener,
    cap: Cap,
    idle: Duration,
}

impl CappedListener {
    /// `listener` under `cap`; a connection idle for `idle` is closed.
    pub fn new(listener: tokio::net::TcpListener, cap: Cap, idle: Duration) -> Self {
        Self {
            listener,
            cap,
            idle,
        }
    }
}

impl axum::serve::Listener for CappedListener {
    type Io = IdleDeadline<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let (stream, remote, Some(place)) = self.cap.accept(&self.listener).await {
                return (
                    IdleDeadline::new(stream, Some(self.idle)).holding(place),
                    remote,
                );
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(registry: &Registry, setting: &str) -> u64 {
        registry
            .gather()
            .iter()
            .filter(|family| family.name() == REFUSALS_METRIC)
            .flat_map(|family| family.get_metric())
            .filter(|metric| metric.get_label().iter().any(|l| l.value() == setting))
            .map(|metric| metric.get_counter().get_value() as u64)
            .sum()
    }

    #[test]
    fn a_connection_over_the_cap_is_refused_and_counted_and_a_closed_one_makes_room() {
        let registry = Registry::new_custom(Some("strait".into()), None).unwrap();
        let refusals = Refusals::register(&registry);
        let cap = Cap::new(refusals.limit("--max-inbound-connections", 2));
        let remote = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let first = cap.admit(remote).expect("first of two");
        let _second = cap.admit(remote).expect("second of two");
        assert!(cap.admit(remote).is_none());
        assert!(cap.admit(remote).is_none());
        assert_eq!(refused(&registry, "--max-inbound-connections"), 2);
        drop(first);
        assert!(cap.admit(remote).is_some());
        assert_eq!(refused(&registry, "--max-inbound-connections"), 2);
    }

    #[tokio::test]
    async fn a_connection_that_reads_nothing_for_its_idle_time_fails_and_reads_keep_it_open() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let idle = Duration::from_millis(300);
        let mut server = IdleDeadline::new(server, Some(idle));
        let started = tokio::time::Instant::now();
        // Bytes every 100 ms keep it open past its idle time.
        let mut byte = [0u8; 1];
        for _ in 0..6 {
            client.write_all(b"x").await.unwrap();
            server.read_exact(&mut byte).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(started.elapsed() > idle);
        // Then silence: the read fails once the idle time has passed since the last byte.
        let quiet = tokio::time::Instant::now();
        let error = server.read(&mut byte).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(
            quiet.elapsed() >= Duration::from_millis(150),
            "{:?}",
            quiet.elapsed()
        );
        // No idle time: never.
        let mut forever = IdleDeadline::new(client, None);
        let waited =
            tokio::time::timeout(Duration::from_millis(400), forever.read(&mut byte)).await;
        assert!(waited.is_err(), "a stream without an idle time timed out");
    }

    fn open_files() -> libc::rlimit {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in raise_open_files.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        limit
    }

    #[test]
    fn the_open_file_limit_is_raised_towards_the_hard_limit_and_never_lowered() {
        let before = open_files();
        let soft = raise_open_files(0);
        let after = open_files();
        assert_eq!(soft, after.rlim_cur);
        assert!(after.rlim_cur >= before.rlim_cur);
        assert_eq!(after.rlim_max, before.rlim_max);
    }

    #[test]
    fn an_amount_over_a_limit_is_refused_with_the_setting_named() {
        let registry = Registry::new_custom(Some("strait".into()), None).unwrap();
        let refusals = Refusals::register(&registry);
        let limit = refusals.limit("--max-header-bytes", 100);
        assert!(!limit.exceeded_by(100, "headers"));
        assert!(limit.exceeded_by(101, "headers"));
        assert_eq!(refused(&registry, "--max-header-bytes"), 1);
        assert_eq!(limit.reason(), "limit --max-header-bytes = 100 reached");
    }
}

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::service::service_fn;
use tokio::net::TcpListener;

use super::*;

/// An app on loopback that answers each request with its method, URI and Host header, and
/// counts the connections it accepted.
struct App {
    address: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl App {
    /// Serves HTTP/1.1, or HTTP/2 cleartext when `http2`; each answer waits `delay` first.
    async fn start(http2: bool, delay: Duration) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let service = service_fn(move |request: Request<Incoming>| async move {
                    tokio::time::sleep(delay).await;
                    let host = request
                        .headers()
                        .get(hyper::header::HOST)
                        .map(|h| h.to_str().unwrap_or("?").to_owned());
                    let said = format!("{} {} {host:?}", request.method(), request.uri());
                    Ok::<_, Infallible>(Response::new(crate::connect::full(Bytes::from(said))))
                });
                let io = TokioIo::new(tcp);
                tokio::spawn(async move {
                    if http2 {
                        let _ = hyper::server::conn::http2::Builder::new(Executor)
                            .serve_connection(io, service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                });
            }
        });
        App { address, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn client(protocol: &str, address: SocketAddr) -> AppClient {
    AppClient::new(port(protocol, address))
}

fn port(protocol: &str, address: SocketAddr) -> AppPort {
    AppPort::parse(&format!("8080/{protocol}={address}")).unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri)
        .header(hyper::header::HOST, "api.shop:8080")
        .body(crate::connect::full(Bytes::new()))
        .unwrap()
}

async fn text(response: Response<Incoming>) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn requests_one_after_another_share_one_http1_connection() {
    let app = App::start(false, Duration::ZERO).await;
    let client = client("http", app.address);
    for n in 0..3 {
        let response = client.send(get(&format!("/items?n={n}"))).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            text(response).await,
            format!("GET /items?n={n} Some(\"api.shop:8080\")")
        );
    }
    assert_eq!(app.accepted(), 1);
    assert_eq!(client.kept(), 1);
}

#[tokio::test]
async fn requests_at_once_open_a_connection_each_and_keep_them_all() {
    let app = App::start(false, Duration::from_millis(200)).await;
    let client = client("http", app.address);
    let at_once = || futures::future::join_all((0..4).map(|_| client.send(get("/"))));
    for response in at_once().await {
        assert_eq!(response.unwrap().status(), 200);
    }
    assert_eq!(app.accepted(), 4);
    // The second wave finds the four free again once their answers were read.
    for response in at_once().await {
        assert_eq!(
            text(response.unwrap()).await,
            "GET / Some(\"api.shop:8080\")"
        );
    }
    assert_eq!(app.accepted(), 4);
    assert_eq!(client.kept(), 4);
}

#[tokio::test]
async fn an_http2_port_shares_one_connection_and_keeps_the_full_uri() {
    let app = App::start(true, Duration::from_millis(100)).await;
    let client = client("grpc", app.address);
    let responses = futures::future::join_all(
        (0..8).map(|_| client.send(get("http://api.shop:8080/pkg.Service/Call"))),
    )
    .await;
    for response in responses {
        let said = text(response.unwrap()).await;
        assert!(
            said.starts_with("GET http://api.shop:8080/pkg.Service/Call"),
            "{said}"
        );
    }
    assert_eq!(app.accepted(), 1);
}

/// An app on a thread of its own that answers one request per connection, keep-alive, and
/// closes the connection only when `close` says so, then says `closed`.
fn closing_app() -> (
    SocketAddr,
    std::sync::mpsc::Sender<()>,
    std::sync::mpsc::Receiver<usize>,
) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (close, closing) = std::sync::mpsc::channel();
    let (said_closed, closed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (accepted, tcp) in listener.incoming().enumerate() {
            let Ok(mut tcp) = tcp else { return };
            let mut request = vec![0; 4096];
            let mut read = 0;
            while !request[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut request[read..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read += n,
                }
            }
            let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            if closing.recv().is_err() {
                return;
            }
            drop(tcp);
            let _ = said_closed.send(accepted + 1);
        }
    });
    (address, close, closed)
}

#[tokio::test]
async fn a_connection_the_app_closed_is_left_and_the_next_request_dials_again() {
    let (address, close, closed) = closing_app();
    let client = client("http", address);
    for round in 1..=3 {
        let response = client.send(get("/")).await.unwrap();
        assert_eq!(text(response).await, "ok");
        close.send(()).unwrap();
        assert_eq!(closed.recv_timeout(Duration::from_secs(5)).unwrap(), round);
        // Once the connection's task has read the close, the pool no longer offers it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while client.free() > 0 {
            assert!(
                Instant::now() < deadline,
                "the closed connection is still free"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn an_app_that_refuses_connections_is_an_error_that_says_so() {
    let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = unused.local_addr().unwrap();
    drop(unused);
    let error = client("http", address).send(get("/")).await.unwrap_err();
    assert!(matches!(error, AppError::Connect(_)), "{error:?}");
    assert!(error.to_string().starts_with("connecting: "), "{error}");
}

#[tokio::test]
async fn unused_connections_are_closed_after_the_idle_timeout() {
    let app = App::start(false, Duration::ZERO).await;
    let client =
        AppClient::with_idle_timeout(port("http", app.address), Duration::from_millis(200));
    client.send(get("/")).await.unwrap();
    assert_eq!(client.kept(), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.kept() > 0 {
        assert!(Instant::now() < deadline, "the connection is still kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The sweep ended with the pool empty; the next request dials and starts it again.
    client.send(get("/")).await.unwrap();
    assert_eq!(app.accepted(), 2);
    assert!(client.pool.lock().sweeping);
}

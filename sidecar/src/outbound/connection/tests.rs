use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{Buffers, serve};
use crate::connect::{Body, full};

const BUFFERS: Buffers = Buffers {
    header_buffer: 16 << 10,
    header_list: 32 << 10,
    park_after: Duration::ZERO,
};

/// Serves the first connection to a fresh port with `handle`; the task ends with the
/// connection, giving how many times it was parked.
async fn serving<H, F>(handle: H) -> (SocketAddr, JoinHandle<u64>)
where
    H: Fn(Request<Body>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    serving_with(handle, BUFFERS).await
}

/// [`serving`] with other buffers.
async fn serving_with<H, F>(handle: H, buffers: Buffers) -> (SocketAddr, JoinHandle<u64>)
where
    H: Fn(Request<Body>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        serve(tcp, handle, buffers).await
    });
    (address, task)
}

/// Answers with the request's method, path and body, read to its end.
async fn echo(request: Request<Body>) -> Response<Body> {
    let (head, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let text = format!(
        "{} {} {}",
        head.method,
        head.uri.path(),
        String::from_utf8_lossy(&body)
    );
    Response::new(full(Bytes::from(text)))
}

/// Answers at once, leaving the request's body unread.
async fn hasty(_: Request<Body>) -> Response<Body> {
    Response::new(full(Bytes::from_static(b"hasty")))
}

/// Answers with `size` bytes of `x`.
async fn large(size: usize) -> Response<Body> {
    Response::new(full(Bytes::from(vec![b'x'; size])))
}

/// Reads one response with a `content-length`: its head (lower-cased) and its body.
async fn response(reader: &mut BufReader<TcpStream>) -> (String, Vec<u8>) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let read = within(reader.read_line(&mut line)).await.unwrap();
        assert!(
            read > 0,
            "the connection closed in a response's head: {head:?}"
        );
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .map(|value| value.trim().parse::<usize>().unwrap())
        .expect("a content-length");
    let mut body = vec![0; length];
    within(reader.read_exact(&mut body)).await.unwrap();
    (head, body)
}

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("within 10 s")
}

async fn send(reader: &mut BufReader<TcpStream>, bytes: &[u8]) {
    within(reader.get_mut().write_all(bytes)).await.unwrap();
}

/// Whether the far end closes the connection (rather than sending more) within 10 s.
async fn closed(reader: &mut BufReader<TcpStream>) -> bool {
    let mut rest = Vec::new();
    within(reader.read_to_end(&mut rest)).await.is_ok() && rest.is_empty()
}

async fn connect(address: SocketAddr) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(address).await.unwrap())
}

#[tokio::test]
async fn a_keep_alive_connection_is_parked_after_each_exchange_and_serves_them_all() {
    let (address, task) = serving(echo).await;
    let mut app = connect(address).await;
    let exchanges: [(&[u8], &str); 3] = [
        (b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n", "GET /a "),
        (
            b"POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
            "POST /b hello",
        ),
        (
            b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "POST /c abc",
        ),
    ];
    for (request, expected) in exchanges {
        send(&mut app, request).await;
        let (head, body) = response(&mut app).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
        assert_eq!(String::from_utf8(body).unwrap(), expected);
    }
    drop(app);
    assert_eq!(within(task).await.unwrap(), 3, "parked once per exchange");
}

#[tokio::test]
async fn a_busy_connection_keeps_hyper_between_exchanges_and_is_parked_once_idle() {
    // Long enough that the back-to-back exchanges below never wait that long between them.
    let park_after = Duration::from_secs(2);
    let (address, task) = serving_with(
        echo,
        Buffers {
            park_after,
            ..BUFFERS
        },
    )
    .await;
    let mut app = connect(address).await;
    for path in ["/a", "/b", "/c"] {
        send(
            &mut app,
            format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(
            response(&mut app).await.1,
            format!("GET {path} ").as_bytes()
        );
    }
    // Idle for longer than the wait can last (twice `park_after`): parked once, and the
    // connection still serves.
    tokio::time::sleep(2 * park_after + Duration::from_millis(500)).await;
    send(&mut app, b"GET /d HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(response(&mut app).await.1, b"GET /d ");
    drop(app);
    assert_eq!(
        within(task).await.unwrap(),
        1,
        "parked once, after the idle spell, not after each busy exchange"
    );
}

#[tokio::test]
async fn pipelined_requests_and_a_head_split_across_writes_are_answered_in_order() {
    let (address, task) = serving(echo).await;
    let mut app = connect(address).await;
    send(
        &mut app,
        b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\nGET /2 HTTP/1.1\r\nhost: x\r\n\r\nGET /3 HTTP/1.1\r\nho",
    )
    .await;
    assert_eq!(response(&mut app).await.1, b"GET /1 ");
    // The first two answered, the third's head has arrived only in part.
    assert_eq!(response(&mut app).await.1, b"GET /2 ");
    send(&mut app, b"st: x\r\n\r\n").await;
    assert_eq!(response(&mut app).await.1, b"GET /3 ");
    send(&mut app, b"GET /4 HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(response(&mut app).await.1, b"GET /4 ");
    drop(app);
    assert!(within(task).await.unwrap() >= 2);
}

#[tokio::test]
async fn a_request_body_left_unread_keeps_the_connection_with_hyper_and_the_next_request_works() {
    let (address, task) = serving(hasty).await;
    let mut app = connect(address).await;
    send(
        &mut app,
        b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n0123456789",
    )
    .await;
    assert_eq!(response(&mut app).await.1, b"hasty");
    send(&mut app, b"GET /b HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(response(&mut app).await.1, b"hasty");
    // A body not yet sent when the answer goes: hyper closes rather than read the rest as a
    // request.
    send(
        &mut app,
        b"POST /c HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n01234",
    )
    .await;
    assert_eq!(response(&mut app).await.1, b"hasty");
    let _ = app
        .get_mut()
        .write_all(b"56789GET /d HTTP/1.1\r\n\r\n")
        .await;
    assert!(closed(&mut app).await);
    assert_eq!(within(task).await.unwrap(), 0, "never parked");
}

#[tokio::test]
async fn a_connection_the_app_asks_to_close_is_closed_after_its_answer() {
    for request in [
        &b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"[..],
        b"GET /a HTTP/1.0\r\nhost: x\r\n\r\n",
    ] {
        let (address, task) = serving(echo).await;
        let mut app = connect(address).await;
        send(&mut app, request).await;
        assert_eq!(response(&mut app).await.1, b"GET /a ");
        assert!(
            closed(&mut app).await,
            "{}",
            String::from_utf8_lossy(request)
        );
        assert_eq!(within(task).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn an_http_1_0_connection_kept_alive_is_parked_and_kept() {
    let (address, task) = serving(echo).await;
    let mut app = connect(address).await;
    for path in ["/a", "/b"] {
        let request = format!("GET {path} HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n");
        send(&mut app, request.as_bytes()).await;
        let (head, body) = response(&mut app).await;
        assert!(head.starts_with("http/1.0 200"), "{head}");
        assert_eq!(body, format!("GET {path} ").as_bytes());
    }
    drop(app);
    assert_eq!(within(task).await.unwrap(), 2);
}

#[tokio::test]
async fn a_response_larger_than_the_socket_takes_is_written_in_full_before_parking() {
    const SIZE: usize = 16 << 20;
    let (address, task) = serving(|_| large(SIZE)).await;
    let mut app = connect(address).await;
    for _ in 0..2 {
        // More than the socket's buffers take: the answer is still being written when hyper
        // is done with its body.
        send(&mut app, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let (_, body) = response(&mut app).await;
        assert_eq!(body.len(), SIZE);
        assert!(body.iter().all(|&byte| byte == b'x'));
    }
    drop(app);
    assert_eq!(within(task).await.unwrap(), 2);
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served_on_one_connection() {
    let (address, task) = serving(echo).await;
    let tcp = TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let driver = tokio::spawn(connection);
    for path in ["/a", "/b"] {
        let request = Request::post(format!("http://x{path}"))
            .body(Full::new(Bytes::from_static(b"h2")))
            .unwrap();
        let response = within(sender.send_request(request)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("POST {path} h2").as_bytes());
    }
    drop(sender);
    within(driver).await.unwrap().unwrap();
    assert_eq!(within(task).await.unwrap(), 0);
}

#[tokio::test]
async fn a_connection_closed_before_a_byte_is_let_go() {
    let (address, task) = serving(echo).await;
    drop(TcpStream::connect(address).await.unwrap());
    assert_eq!(within(task).await.unwrap(), 0);
}

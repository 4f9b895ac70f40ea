//! HTTP pieces both proxy directions use: the hop-by-hop headers that never cross a proxy, and
//! the responses the sidecar makes itself.

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};

use crate::connect::{self, Body};

/// Header on responses the sidecar made itself, saying why.
pub const PROXY_ERROR_HEADER: &str = "strait-proxy-error";

/// Names of headers every request passes through, parsed once: a name given as `&str` is
/// parsed again at each look-up, which cost a tenth of a sidecar's instructions per request.
pub(crate) mod names {
    use hyper::header::HeaderName;

    pub static TRACEPARENT: HeaderName =
        HeaderName::from_static(strait_federation::trace::TRACEPARENT);
    pub static CLIENT_ID: HeaderName = HeaderName::from_static(crate::CLIENT_ID_HEADER);
    pub static CALLER_READY: HeaderName = HeaderName::from_static(crate::CALLER_READY_HEADER);
    pub static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    pub static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
}

/// Headers that belong to one hop and never cross a proxy; `Connection` first (see
/// [`strip_hop_by_hop`]).
fn hop_by_hop() -> [&'static HeaderName; 8] {
    [
        &header::CONNECTION,
        &names::KEEP_ALIVE,
        &names::PROXY_CONNECTION,
        &header::PROXY_AUTHORIZATION,
        &header::PROXY_AUTHENTICATE,
        &header::TE,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ]
}

/// Removes hop-by-hop headers, and those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One look at the names present, then only those are removed: most messages carry none,
    // and an HTTP/1.1 app's response often `connection: keep-alive` alone. Removing every
    // hop-by-hop name was 4 % of the serving sidecar's instructions.
    let hop = hop_by_hop();
    let mut present = [false; 8];
    for name in headers.keys() {
        if let Some(at) = hop.iter().position(|hop| *hop == name) {
            present[at] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    let [connection, ..] = present;
    if connection {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(connection_names)
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, _) in hop.into_iter().zip(present).filter(|(_, present)| *present) {
        // `te: trailers` is allowed (and needed by gRPC) on HTTP/2.
        if name == header::TE
            && headers
                .get(header::TE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
        {
            continue;
        }
        headers.remove(name);
    }
}

/// The header names a `Connection` value lists, leaving out the options that name no header
/// of their own (`close`; `keep-alive`, which is removed as a hop-by-hop name anyway). Read as
/// bytes: checking the value as text first, then splitting it as a `str`, cost a quarter of
/// [`strip_hop_by_hop`].
fn connection_names(value: &HeaderValue) -> impl Iterator<Item = HeaderName> + '_ {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| {
            !token.eq_ignore_ascii_case(b"keep-alive") && !token.eq_ignore_ascii_case(b"close")
        })
        .filter_map(|token| HeaderName::from_bytes(token).ok())
}

/// A response the sidecar makes itself.
pub fn error_response(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(connect::full(Bytes::from(format!("strait: {message}\n"))));
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(&message.replace(['\r', '\n'], " ")) {
        response.headers_mut().insert(PROXY_ERROR_HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[test]
    fn hop_by_hop_headers_are_stripped_but_te_trailers_stays() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("close, x-private"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        let names: Vec<_> = headers.keys().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(names, ["te", "x-kept"]);
        // The names `connection` gives go, whatever their case and spacing, and hop-by-hop
        // ones with them.
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("Keep-Alive , X-A,te"),
        );
        headers.append("connection", HeaderValue::from_static("x-b"));
        for name in ["keep-alive", "x-a", "x-b", "te", "x-kept"] {
            headers.insert(name, HeaderValue::from_static("trailers"));
        }
        strip_hop_by_hop(&mut headers);
        let names: Vec<_> = headers.keys().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(names, ["x-kept"]);
        // `connection` alone, naming another header: both go.
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("x-private"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        let names: Vec<_> = headers.keys().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(names, ["x-kept"]);
        // A value with a byte that is not text still has its names read, and an option
        // that names no header (`close`) leaves alone a header of that name.
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_bytes(b"x-a, close, \xff").unwrap();
        headers.insert("connection", value);
        for name in ["x-a", "close", "x-kept"] {
            headers.insert(name, HeaderValue::from_static("1"));
        }
        strip_hop_by_hop(&mut headers);
        let names: Vec<_> = headers.keys().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(names, ["close", "x-kept"]);
        // Any one of them alone is found too (and `te` other than trailers goes).
        for name in hop_by_hop() {
            let mut headers = HeaderMap::new();
            headers.insert(name.clone(), HeaderValue::from_static("x"));
            headers.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut headers);
            let names: Vec<_> = headers.keys().map(|k| k.as_str().to_owned()).collect();
            assert_eq!(names, ["x-kept"], "{name}");
        }
    }

    #[tokio::test]
    async fn the_sidecars_own_response_says_why_in_its_body_and_on_one_header_line() {
        let response = error_response(StatusCode::BAD_GATEWAY, "the app\r\nfailed".into());
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()[PROXY_ERROR_HEADER], "the app  failed");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "strait: the app\r\nfailed\n");
    }
}

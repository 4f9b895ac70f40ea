//! The sidecar's limits on what its callers can make it hold (flags of `strait sidecar run`):
//! connections per side, the bytes of a request's headers, the bodies kept to send again and
//! the mirror copies in flight. Each is counted in `strait_limit_refusals_total` under its flag
//! when hit, and refused in a way that names it.

use bytes::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use strait_io::limit::{Cap, Limit, Refusals};

use crate::connect::{self, Body};

/// What a sidecar is configured to allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Connections open at once on the inbound port (`--max-inbound-connections`).
    pub inbound_connections: u32,
    /// Connections open at once from the app, over the proxy, transparent and upstream
    /// listeners together (`--max-outbound-connections`).
    pub outbound_connections: u32,
    /// Bytes of a request's target and headers (`--max-header-bytes`).
    pub header_bytes: u32,
    /// The largest request body kept to send again or to copy (`--max-replay-body-bytes`).
    pub replay_body_bytes: u32,
    /// Mirror copies in flight at once (`--max-mirrors-in-flight`).
    pub mirrors_in_flight: u32,
    /// Connections open at once on the admin port (`--max-admin-connections`).
    pub admin_connections: u32,
}

impl LimitsConfig {
    /// The file descriptors the connection caps may hold at once: each connection holds its
    /// own and the one it opens onward.
    pub fn open_files(&self) -> u64 {
        2 * (u64::from(self.inbound_connections) + u64::from(self.outbound_connections))
            + u64::from(self.admin_connections)
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            inbound_connections: 20_000,
            outbound_connections: 20_000,
            header_bytes: 64 << 10,
            replay_body_bytes: 64 << 10,
            mirrors_in_flight: 256,
            admin_connections: 1_024,
        }
    }
}

/// The limits of a running sidecar.
pub struct Limits {
    pub(crate) inbound: Cap,
    pub(crate) outbound: Cap,
    pub(crate) admin: Cap,
    pub(crate) header_bytes: Limit,
    pub(crate) replay_body: Limit,
    pub(crate) mirrors: Cap,
}

impl Limits {
    /// The limits of `config`, counted in `refusals`.
    pub fn new(config: &LimitsConfig, refusals: &Refusals) -> Self {
        let limit = |flag, value: u32| refusals.limit(flag, u64::from(value));
        Self {
            inbound: Cap::new(limit(
                "--max-inbound-connections",
                config.inbound_connections,
            )),
            outbound: Cap::new(limit(
                "--max-outbound-connections",
                config.outbound_connections,
            )),
            admin: Cap::new(limit("--max-admin-connections", config.admin_connections)),
            header_bytes: limit("--max-header-bytes", config.header_bytes),
            replay_body: limit("--max-replay-body-bytes", config.replay_body_bytes),
            mirrors: Cap::new(limit("--max-mirrors-in-flight", config.mirrors_in_flight)),
        }
    }

    /// What HTTP/1.1 may buffer for a connection's request head: twice the limit, so that a
    /// request over it reaches [`Limits::refuse_large_headers`] and gets its answer, while
    /// hyper's own refusal stays a backstop for memory.
    pub(crate) fn header_buffer(&self) -> usize {
        usize::try_from(self.header_bytes.max().saturating_mul(2))
            .unwrap_or(usize::MAX)
            .max(16 << 10)
    }

    /// The header list HTTP/2 takes per stream (SETTINGS_MAX_HEADER_LIST_SIZE): the limit and
    /// 16 KiB of room, so that a request a little over it gets the answer that names it.
    pub(crate) fn header_list(&self) -> u32 {
        u32::try_from(self.header_bytes.max() + (16 << 10)).unwrap_or(u32::MAX)
    }

    /// A `431 Request Header Fields Too Large` naming the limit when the request's target
    /// and headers are over it.
    pub(crate) fn refuse_large_headers<B>(&self, request: &Request<B>) -> Option<Response<Body>> {
        let size = header_bytes(request);
        if !self.header_bytes.exceeded_by(size, "request headers") {
            return None;
        }
        let text = format!(
            "strait: the request's headers are {size} bytes: {}\n",
            self.header_bytes.reason()
        );
        let mut response = Response::new(connect::full(Bytes::from(text)));
        *response.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        Some(response)
    }
}

/// The size of a request's target and headers, as HTTP/2 counts a header list (each field's
/// name and value plus 32 bytes).
pub fn header_bytes<B>(request: &Request<B>) -> u64 {
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum();
    let target = written_len(request.uri()) + request.method().as_str().len();
    u64::try_from(fields + target).unwrap_or(u64::MAX)
}

/// The length of a URI as it is written, without writing it: every request is measured, and
/// writing its URI out was 2 % of the serving sidecar's instructions.
fn written_len(uri: &Uri) -> usize {
    uri.scheme_str()
        .map_or(0, |scheme| scheme.len() + "://".len())
        + uri
            .authority()
            .map_or(0, |authority| authority.as_str().len())
        + uri.path().len()
        + uri.query().map_or(0, |query| "?".len() + query.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_over_the_limit_get_a_431_that_names_the_flag() {
        let registry = prometheus::Registry::new();
        let refusals = Refusals::register(&registry);
        let limits = Limits::new(
            &LimitsConfig {
                header_bytes: 1_000,
                ..LimitsConfig::default()
            },
            &refusals,
        );
        let small = Request::get("/x").header("a", "b").body(()).unwrap();
        assert!(limits.refuse_large_headers(&small).is_none());
        let large = Request::get("/x")
            .header("cookie", "c".repeat(1_000))
            .body(())
            .unwrap();
        let refused = limits.refuse_large_headers(&large).expect("refused");
        assert_eq!(
            refused.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        assert_eq!(header_bytes(&small), 1 + 1 + 32 + 2 + 3);
        assert_eq!(limits.header_buffer(), 16 << 10);
        assert_eq!(limits.header_list(), 1_000 + (16 << 10));
    }

    #[test]
    fn a_target_is_measured_as_long_as_it_is_written() {
        for target in [
            "/",
            "/items?page=2&sort=",
            "*",
            "api.shop:8080",
            "http://api.shop",
            "http://api.shop:8080/",
            "http://api.shop:8080/items/7?q",
            "https://user@api.shop/a%20b?x=1#frag",
            "grpc://api.shop:50051/shop.Items/List",
        ] {
            let uri: Uri = target.parse().unwrap();
            assert_eq!(written_len(&uri), uri.to_string().len(), "{target}");
        }
    }
}

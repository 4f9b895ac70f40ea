//! The outbound path, top to bottom: the app's request arrives (HTTP proxy port, a per-upstream
//! TCP listener, or a transparently redirected connection); the name is resolved in the
//! catalog; a target is chosen (this cluster's endpoints first, by latency; other clusters
//! through the gateway when none is usable); the request goes over the pooled mutual-TLS HTTP/2
//! connection, or the bytes over a TLS connection of their own; failures to connect are retried
//! on another target; the outcome is measured.
//!
//! HTTP requests take [`proxy_http`] (in `http_proxy`, stage by stage), TCP connections
//! [`proxy_tcp`] (in `tcp`); `transparent` tells which a redirected connection is. Planning
//! (`crate::plan`) and one try of a request (`crate::attempt`) are shared with mirroring.

mod connection;
mod http_proxy;
mod tcp;
mod transparent;

pub use http_proxy::{proxy_http, serve_http_proxy};
pub use tcp::{TcpError, Untaken, proxy_tcp, serve_upstream};
pub(crate) use transparent::original_destination;
pub use transparent::{PassthroughError, RedirectError, looks_like_http, serve_transparent};

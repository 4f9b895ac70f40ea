//! The IO shell around `strait-federation`, as quinn is around quinn-proto: everything that
//! touches a socket, a file, the clock or the operating system's randomness on behalf of
//! federation's sans-IO types, shared by the gateway, the sidecar and the CLI.
//!
//! - [`api`]: dialing a gateway's gRPC API over TLS;
//! - [`flow`]: reading and writing a relayed flow's header on a byte stream;
//! - [`files`] and [`pki`]: text files written atomically, and the trust material kept in them;
//! - [`dns`]: a probe of a DNS server;
//! - [`clock`] and [`random`]: the wall clock and random numbers federation is handed;
//! - [`admin`]: the admin HTTP server (`/healthz`, `/readyz`, `/metrics`) of every process;
//! - [`spans`]: finished spans sent to an OpenTelemetry collector;
//! - [`limit`]: caps on connections and sizes, each named by its setting and counted when hit.

pub mod admin;
pub mod api;
pub mod clock;
pub mod dns;
pub mod files;
pub mod flow;
pub mod limit;
pub mod pki;
pub mod random;
pub mod spans;

//! The mesh-wide model of strait and its replication: identity and trust, the service catalog,
//! the peer protocol between gateways (handshake and session), link tokens, policy, and the
//! documents operators apply.
//!
//! Sans IO, as quinn-proto and rustls are: nothing here opens a socket, reads or writes a file,
//! reads a clock or draws a random number. Types take the time (`now`) and random values (token
//! ids, epochs) as arguments and return decisions and frames; `strait-io`, the gateway and the
//! sidecar own the sockets, files, timers and tasks. Check it with
//! `grep -rnE 'tokio::net|std::fs|TcpStream|SystemTime::now|thread_rng|OsRng|getrandom|SystemRandom' federation/src`:
//! it finds test modules only (`tests/tests/architecture.rs` checks it with every test run). The one exception is key generation (`pki`, `link`): rcgen and
//! ring draw a new private key from the operating system inside their own calls.

pub mod catalog;
pub mod certificate;
pub mod cidr;
pub mod document;
pub mod duration;
pub mod flow;
pub mod golden;
pub mod handshake;
pub mod identity;
pub mod link;
pub mod location;
pub mod pki;
pub mod policy;
pub mod resource;
pub mod seeded;
pub mod session;
pub mod text;
pub mod tls;
pub mod trace;
pub mod view;
pub mod wire;
pub mod workload;

/// Generated protocol types (see `proto/`).
pub mod proto {
    /// The gateway-to-gateway protocol.
    pub mod peer {
        tonic::include_proto!("strait.peer.v1");
    }
    /// The operator API of a gateway.
    pub mod operator {
        tonic::include_proto!("strait.operator.v1");
    }
    /// The API a gateway serves to its sidecars.
    pub mod workload {
        tonic::include_proto!("strait.workload.v1");
    }
    /// Golden metrics, as sidecars report them and gateways exchange them.
    pub mod golden {
        tonic::include_proto!("strait.golden.v1");
    }
    /// Live requests for `strait tap`.
    pub mod tap {
        tonic::include_proto!("strait.tap.v1");
    }
    /// OpenTelemetry's trace export (OTLP/gRPC), the part strait sends.
    pub mod otlp {
        tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
    }
    /// The external authorizer that `action: external` policies consult.
    pub mod authorizer {
        tonic::include_proto!("strait.authorizer.v1");
    }
}

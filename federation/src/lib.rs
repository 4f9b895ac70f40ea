//! The mesh-wide model of strait and its replication: identity and trust, the service catalog,
//! the peer protocol between gateways (sans IO), link tokens, and the documents operators apply.
//! Nothing here opens a socket or reads a clock: the gateway crate drives it.

pub mod api;
pub mod catalog;
pub mod cidr;
pub mod document;
pub mod flow;
pub mod identity;
pub mod link;
pub mod location;
pub mod pki;
pub mod policy;
pub mod resource;
pub mod session;
pub mod text;
pub mod tls;
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
    /// The external authorizer that `action: external` policies consult.
    pub mod authorizer {
        tonic::include_proto!("strait.authorizer.v1");
    }
}

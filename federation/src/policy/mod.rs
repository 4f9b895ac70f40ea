//! Mesh-wide policy, the part that needs no sockets: the documents operators write, checked
//! into validated types; the decision for one request; and the replicated set of policies that
//! every gateway converges on whatever the order in which changes reach it.
//!
//! `authorization` holds AuthorizationPolicy (documents and decisions), `route` HTTPRoute
//! (matches, weighted splits, timeouts, retries), `replication` the versions and the
//! last-writer-wins set. Nothing here is wired into `apply`, the peer protocol
//! or the sidecars yet.

pub mod authorization;
pub mod replication;
pub mod route;

/// The API version of policy documents.
pub const POLICY_API_VERSION: &str = "policy.strait.dev/v1alpha1";

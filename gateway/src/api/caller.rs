//! Who calls the gateway's API: the caller's identity that each request carries from its TLS
//! connection, and the rule that the operator API serves operators only.

use strait_federation::identity::{Role, SpiffeId};
use tonic::{Request, Status};

/// A TLS connection of the API, with the caller's identity when it presented a certificate.
pub(super) type ApiStream = strait_io::api::Accepted<Caller>;

/// Who called the API: the identity of the client certificate, if any, and the fingerprint of
/// the issuer that signed it.
#[derive(Debug, Clone)]
pub struct Caller(pub Option<SpiffeId>, pub Option<String>);

impl Caller {
    /// The caller of a request (every request comes through [`ApiStream`]).
    pub fn of<T>(request: &Request<T>) -> Option<&SpiffeId> {
        request
            .extensions()
            .get::<Caller>()
            .and_then(|caller| caller.0.as_ref())
    }

    /// The fingerprint of the issuer of the caller's certificate.
    pub fn issuer_of<T>(request: &Request<T>) -> Option<String> {
        request
            .extensions()
            .get::<Caller>()
            .and_then(|caller| caller.1.clone())
    }
}

/// Serves operator calls to operators only: a workload's certificate, or none, is refused.
pub(super) fn operators_only(request: Request<()>) -> Result<Request<()>, Status> {
    match Caller::of(&request) {
        Some(id) if id.role() == Role::Operator => Ok(request),
        Some(id) => Err(Status::permission_denied(format!(
            "{id} is not an operator identity"
        ))),
        None => Err(Status::unauthenticated(
            "the operator API needs an operator certificate",
        )),
    }
}

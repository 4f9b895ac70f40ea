//! Who calls the gateway's API: the caller's identity that each request carries from its TLS
//! connection, and the rule that the operator API serves operators only.

use strait_federation::identity::{Role, SpiffeId};
use tonic::{Request, Status};

/// A TLS connection of the API, with the caller's identity when it presented a certificate.
pub(super) type ApiStream = strait_io::api::Accepted<Caller>;

/// Who called the API, from the client certificate of its TLS connection (all `None` without
/// one).
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Option<SpiffeId>,
    /// The fingerprint of the issuer that signed the certificate.
    pub issuer: Option<String>,
    /// The fingerprint of the certificate itself.
    pub certificate: Option<String>,
}

impl Caller {
    /// The caller of a request (every request comes through [`ApiStream`]).
    pub fn of<T>(request: &Request<T>) -> Option<&SpiffeId> {
        request
            .extensions()
            .get::<Caller>()
            .and_then(|caller| caller.identity.as_ref())
    }

    /// The fingerprint of the caller's certificate.
    pub fn certificate_of<T>(request: &Request<T>) -> Option<String> {
        request
            .extensions()
            .get::<Caller>()
            .and_then(|caller| caller.certificate.clone())
    }

    /// The fingerprint of the issuer of the caller's certificate.
    pub fn issuer_of<T>(request: &Request<T>) -> Option<String> {
        request
            .extensions()
            .get::<Caller>()
            .and_then(|caller| caller.issuer.clone())
    }
}

/// Serves operator calls to operators only: a workload's certificate, or none, is refused, and
/// so is an operator identity or certificate that was revoked.
pub(super) fn operators_only(
    shared: &crate::Shared,
    request: Request<()>,
) -> Result<Request<()>, Status> {
    match Caller::of(&request) {
        Some(id) if id.role() == Role::Operator => {
            let certificate = Caller::certificate_of(&request);
            match crate::lock(&shared.state)
                .revocations
                .refuses(id, certificate.as_deref())
            {
                Some(why) => Err(Status::permission_denied(why)),
                None => Ok(request),
            }
        }
        Some(id) => Err(Status::permission_denied(format!(
            "{id} is not an operator identity"
        ))),
        None => Err(Status::unauthenticated(
            "the operator API needs an operator certificate",
        )),
    }
}

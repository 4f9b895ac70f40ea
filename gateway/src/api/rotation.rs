//! The operator calls of a root rotation (`strait trust rotate`) and of renewing an operator's
//! certificate: each checks its input against the trust in force ([`crate::trust`]), writes
//! what it changes before using it, and tells the sidecars (their next view carries the bundle
//! and the issuer's fingerprint).

use std::sync::Arc;
use std::time::SystemTime;

use strait_federation::pki::{PkiError, TrustBundle, fingerprint, parse_certs};
use strait_federation::proto::operator::{
    CertificateStatus, CreateIssuerRequestResponse, InstallIssuerResponse,
    RenewOperatorCertificateResponse, UpdateTrustBundleResponse,
};
use tonic::Status;

use crate::trust::TrustError;
use crate::{Shared, lock};

/// How long a renewed operator certificate lives.
const OPERATOR_LIFETIME: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

fn refused(e: TrustError) -> Status {
    match e {
        TrustError::Refused(why) => Status::failed_precondition(why),
        TrustError::Pki(PkiError::Pem { what, .. }) => Status::invalid_argument(what),
        other => Status::invalid_argument(other.to_string()),
    }
}

/// Replaces the bundle; roots it drops are remembered as retired.
pub fn update_bundle(
    shared: &Arc<Shared>,
    bundle_pem: &str,
) -> Result<UpdateTrustBundleResponse, Status> {
    let bundle = TrustBundle::from_pem(
        shared.config.trust_domain.clone(),
        bundle_pem,
        std::path::Path::new("bundle_pem"),
    )
    .map_err(|e| Status::invalid_argument(e.to_string()))?;
    for root in bundle.roots() {
        let domain = strait_federation::certificate::trust_domain_of(root);
        if domain.as_ref() != Some(&shared.config.trust_domain) {
            return Err(Status::invalid_argument(format!(
                "root {} is not a root of trust domain {}",
                fingerprint(root),
                shared.config.trust_domain
            )));
        }
    }
    let before = shared.trust.bundle().fingerprints();
    let changed = shared
        .trust
        .replace_bundle(bundle.clone())
        .map_err(refused)?;
    if changed {
        let mut state = lock(&shared.state);
        for gone in before.iter().filter(|f| !bundle.contains_fingerprint(f)) {
            state.retired_roots.insert(gone.clone());
        }
        drop(state);
        shared.mark_dirty();
        shared.views_changed();
        tracing::info!(roots = ?bundle.fingerprints(), "trust bundle replaced");
    }
    Ok(UpdateTrustBundleResponse {
        fingerprints: bundle.fingerprints(),
        changed,
    })
}

/// Counts a change an operator made: one generation past both this replica's and the
/// credentials folder's (see [`crate::trust::generation_of`]).
pub fn count_rotation(shared: &Shared) -> Result<(), Status> {
    let generation = crate::trust::generation_of(&crate::trust::rotated_dir(&shared.config))
        .max(crate::trust::generation_of(shared.config.credentials()))
        + 1;
    shared
        .trust
        .set_generation(generation)
        .map_err(|e| Status::internal(e.to_string()))
}

/// A request for the cluster's new issuer key.
pub fn issuer_request(shared: &Shared) -> Result<CreateIssuerRequestResponse, Status> {
    Ok(CreateIssuerRequestResponse {
        csr: shared.trust.issuer_request().map_err(refused)?,
        cluster: shared.config.cluster.to_string(),
    })
}

/// Installs the new issuer, re-issues the gateway's own certificate under it and tells the
/// sidecars to renew theirs.
pub fn install_issuer(
    shared: &Arc<Shared>,
    certificate_pem: String,
) -> Result<InstallIssuerResponse, Status> {
    let root = shared
        .trust
        .install_issuer(certificate_pem)
        .map_err(refused)?;
    issuer_replaced(shared, &root).map_err(|e| Status::internal(e.to_string()))?;
    let issuer = shared.trust.issuer();
    let cert = parse_certs(&issuer.chain_pem, std::path::Path::new("issuer"))
        .map_err(|e| Status::internal(e.to_string()))?
        .remove(0);
    Ok(InstallIssuerResponse {
        issuer: Some(CertificateStatus {
            subject: strait_federation::certificate::describe(&cert),
            not_after: strait_federation::certificate::not_after(&cert).unwrap_or_default(),
            pem: issuer.chain_pem.clone(),
            fingerprint: fingerprint(&cert),
        }),
        root_fingerprint: root,
    })
}

/// What follows a new issuer in force: the gateway's own certificate re-issued under it, and
/// a view that tells the sidecars to renew theirs.
pub fn issuer_replaced(shared: &Shared, root: &str) -> Result<(), TrustError> {
    let identity = strait_federation::identity::SpiffeId::gateway(
        &shared.config.trust_domain,
        &shared.config.cluster,
    );
    let leaf = shared.trust.issuer().issue(
        &identity,
        strait_federation::pki::LEAF_LIFETIME,
        SystemTime::now(),
    )?;
    shared.certs.replace(&leaf)?;
    shared.views_changed();
    tracing::info!(issuer = %shared.trust.issuer_fingerprint(), root = %root, "issuer replaced");
    Ok(())
}

/// A new certificate for the calling operator, under the issuer in force.
pub fn renew_operator(
    shared: &Shared,
    caller: &strait_federation::identity::SpiffeId,
    csr: &[u8],
) -> Result<RenewOperatorCertificateResponse, Status> {
    let chain_pem = shared
        .trust
        .issuer()
        .sign_csr(csr, caller, OPERATOR_LIFETIME, SystemTime::now())
        .map_err(|e| Status::invalid_argument(format!("csr: {e}")))?;
    let not_after = parse_certs(&chain_pem, std::path::Path::new("operator"))
        .ok()
        .and_then(|c| {
            c.first()
                .and_then(strait_federation::certificate::not_after)
        })
        .unwrap_or_default();
    tracing::info!(operator = %caller, "operator certificate renewed");
    Ok(RenewOperatorCertificateResponse {
        chain_pem,
        not_after,
    })
}

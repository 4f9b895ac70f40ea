//! Reading X.509 certificates: their URI SANs and the one SPIFFE identity a peer's leaf must
//! carry. Shared by the PKI (which checks what it loads) and the TLS verifiers.

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use crate::identity::{NameError, SpiffeId, TrustDomain};

/// Why a certificate does not name one identity.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CertificateError {
    #[error("unparsable certificate: {0}")]
    Unparsable(String),
    #[error("{0}")]
    Identity(#[from] NameError),
    #[error("the peer sent no certificate")]
    Missing,
    #[error("the peer's certificate has no SPIFFE identity")]
    NoIdentity,
    #[error("the peer's certificate has more than one SPIFFE identity")]
    SeveralIdentities,
}

/// The SPIFFE identities in a certificate's URI SANs.
pub fn identities_of(cert: &CertificateDer<'_>) -> Result<Vec<SpiffeId>, CertificateError> {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| CertificateError::Unparsable(e.to_string()))?;
    uris_of(cert)
        .iter()
        .map(|uri| uri.parse::<SpiffeId>().map_err(CertificateError::from))
        .collect()
}

/// The URI SANs of a certificate (none when it cannot be parsed).
pub(crate) fn uris_of(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let mut uris = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                uris.push((*uri).to_owned());
            }
        }
    }
    uris
}

/// When a certificate expires (Unix seconds); `None` when it cannot be parsed.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<u64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    u64::try_from(parsed.validity().not_after.timestamp()).ok()
}

/// A certificate's first URI SAN, else its subject (for people).
pub fn describe(cert: &CertificateDer<'_>) -> String {
    if let Some(uri) = uris_of(cert).into_iter().next() {
        return uri;
    }
    x509_parser::parse_x509_certificate(cert.as_ref()).map_or_else(
        |_| "an unparsable certificate".into(),
        |(_, c)| c.subject().to_string(),
    )
}

/// The trust domain a root certificate names (`spiffe://<trust-domain>` in its URI SAN).
pub fn trust_domain_of(root: &CertificateDer<'_>) -> Option<TrustDomain> {
    uris_of(root)
        .iter()
        .find_map(|uri| TrustDomain::new(uri.strip_prefix("spiffe://")?).ok())
}

/// The one SPIFFE identity of a peer's leaf certificate.
pub fn peer_identity(chain: &[CertificateDer<'_>]) -> Result<SpiffeId, CertificateError> {
    let leaf = chain.first().ok_or(CertificateError::Missing)?;
    let mut ids = identities_of(leaf)?;
    match ids.len() {
        1 => Ok(ids.remove(0)),
        0 => Err(CertificateError::NoIdentity),
        _ => Err(CertificateError::SeveralIdentities),
    }
}

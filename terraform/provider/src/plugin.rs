//! How Terraform starts a provider and talks to it: the handshake (a magic cookie in the
//! environment, one line on stdout naming the protocol, the address and the provider's
//! certificate) and gRPC over mutual TLS on a loopback port.
//!
//! Terraform sends its own client certificate (`PLUGIN_CLIENT_CERT`), made for this one run,
//! with an ECDSA P-521 key. ring, the one crypto provider of strait, cannot verify P-521
//! signatures, so this provider does not make client authentication optional (what some
//! providers do): it accepts exactly the certificate Terraform named, and verifies the TLS
//! signature made with its key with the RustCrypto `p521` crate. Every other signature goes
//! to ring as usual.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls::DigitallySignedStruct;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DistinguishedName, SignatureScheme};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::proto::plugin::grpc_controller_server::GrpcControllerServer;
use crate::proto::provider_server::ProviderServer;
use crate::server::{Controller, StraitProvider};

/// The environment variable Terraform sets for its plugins, and its value: a binary started
/// without it is not being run by Terraform.
pub const MAGIC_COOKIE_KEY: &str = "TF_PLUGIN_MAGIC_COOKIE";
pub const MAGIC_COOKIE_VALUE: &str =
    "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";

/// The plugin host's own protocol version, and the provider protocol's major version.
const CORE_PROTOCOL: u32 = 1;
const PROVIDER_PROTOCOL: u32 = 6;

/// The largest message Terraform may send (a state or a plan of many resources).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Why the plugin could not start.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(
        "this is strait's Terraform provider: Terraform starts it (terraform init finds it in a plugin folder; see docs/terraform.md)"
    )]
    NotTerraform,
    #[error(
        "Terraform offers plugin protocol versions {offered:?}; this provider speaks version 6 (Terraform 1.0 or later)"
    )]
    Protocol { offered: String },
    #[error(
        "PLUGIN_CLIENT_CERT is not set: this provider serves Terraform only over mutual TLS (Terraform 1.0 and later set it)"
    )]
    NoClientCertificate,
    #[error("PLUGIN_CLIENT_CERT holds no certificate: {0}")]
    ClientCertificate(String),
    #[error("cannot make the provider's certificate: {0}")]
    Certificate(String),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// What Terraform's environment asks of the plugin.
#[derive(Debug)]
pub struct Handshake {
    /// Terraform's client certificate, made for this run: the only one served.
    pub client_certificate: CertificateDer<'static>,
}

impl Handshake {
    /// Reads the environment through `var`.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Handshake, PluginError> {
        if var(MAGIC_COOKIE_KEY).as_deref() != Some(MAGIC_COOKIE_VALUE) {
            return Err(PluginError::NotTerraform);
        }
        if let Some(offered) = var("PLUGIN_PROTOCOL_VERSIONS")
            && !offered
                .split(',')
                .any(|v| v.trim() == PROVIDER_PROTOCOL.to_string())
        {
            return Err(PluginError::Protocol { offered });
        }
        let pem = var("PLUGIN_CLIENT_CERT")
            .filter(|pem| !pem.is_empty())
            .ok_or(PluginError::NoClientCertificate)?;
        let client_certificate = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| PluginError::ClientCertificate(e.to_string()))?;
        Ok(Handshake { client_certificate })
    }
}

/// The line Terraform reads on stdout: protocol versions, where to dial, and the server
/// certificate it must trust (base64 of the DER, without padding).
pub fn handshake_line(address: SocketAddr, certificate: &CertificateDer<'_>) -> String {
    let certificate = base64::engine::general_purpose::STANDARD_NO_PAD.encode(certificate.as_ref());
    format!("{CORE_PROTOCOL}|{PROVIDER_PROTOCOL}|tcp|{address}|grpc|{certificate}")
}

/// A certificate for this run of the provider: self-signed, for `localhost` (the name
/// Terraform checks), usable as its own authority (Terraform trusts it as a root).
fn server_certificate() -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), PluginError> {
    let failed = |e: rcgen::Error| PluginError::Certificate(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).map_err(failed)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "strait Terraform provider");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let certificate = params.self_signed(&key).map_err(failed)?;
    Ok((
        certificate.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    ))
}

/// Accepts exactly Terraform's certificate, and checks the handshake's signature with its key.
#[derive(Debug)]
struct TerraformClient {
    certificate: CertificateDer<'static>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl TerraformClient {
    fn verify(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signed: &DigitallySignedStruct,
        tls13: bool,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if signed.scheme == SignatureScheme::ECDSA_NISTP521_SHA512 {
            return verify_p521(message, certificate, signed.signature());
        }
        if tls13 {
            rustls::crypto::verify_tls13_signature(message, certificate, signed, &self.algorithms)
        } else {
            rustls::crypto::verify_tls12_signature(message, certificate, signed, &self.algorithms)
        }
    }
}

/// Verifies an ECDSA P-521 SHA-512 signature (DER) with the certificate's public key.
fn verify_p521(
    message: &[u8],
    certificate: &CertificateDer<'_>,
    signature: &[u8],
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
    verify_p521_with(
        message,
        &parsed.public_key().subject_public_key.data,
        signature,
    )
}

/// Verifies an ECDSA P-521 SHA-512 signature (DER) with a public key (a SEC1 point).
fn verify_p521_with(
    message: &[u8],
    point: &[u8],
    signature: &[u8],
) -> Result<HandshakeSignatureValid, rustls::Error> {
    use p521::ecdsa::signature::Verifier as _;
    let bad = || rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature);
    let key = p521::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| bad())?;
    let signature = p521::ecdsa::Signature::from_der(signature).map_err(|_| bad())?;
    key.verify(message, &signature).map_err(|_| bad())?;
    Ok(HandshakeSignatureValid::assertion())
}

impl ClientCertVerifier for TerraformClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.certificate.as_ref() {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify(message, certificate, signed, false)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify(message, certificate, signed, true)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        let mut schemes = self.algorithms.supported_schemes();
        schemes.push(SignatureScheme::ECDSA_NISTP521_SHA512);
        schemes
    }
}

/// The TLS configuration of the plugin's server, and its certificate.
fn tls_config(
    client: CertificateDer<'static>,
) -> Result<(rustls::ServerConfig, CertificateDer<'static>), PluginError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = TerraformClient {
        certificate: client,
        algorithms: provider.signature_verification_algorithms,
    };
    let (certificate, key) = server_certificate()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![certificate.clone()], key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, certificate))
}

/// A TLS connection from Terraform.
type PluginStream = strait_io::api::Accepted<()>;

/// Serves the provider until Terraform asks it to stop: prints the handshake line through
/// `announce`, then answers on a loopback port.
pub async fn serve(
    handshake: Handshake,
    announce: impl FnOnce(&str) -> std::io::Result<()>,
) -> Result<(), PluginError> {
    let (config, certificate) = tls_config(handshake.client_certificate)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    announce(&handshake_line(address, &certificate))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::mpsc::channel::<PluginStream>(8);
    let accept_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = accept_stop.cancelled() => return,
            };
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "cannot accept a plugin connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx
                            .send(strait_io::api::Accepted(
                                strait_io::limit::IdleDeadline::new(stream, None),
                                (),
                            ))
                            .await;
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "a plugin connection failed TLS"),
                    Err(_) => tracing::warn!("a plugin connection sent no TLS handshake in 10 s"),
                }
            });
        }
    });
    let incoming = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|s| (Ok::<_, std::io::Error>(s), rx))
    });
    let provider = StraitProvider::default();
    tonic::transport::Server::builder()
        .add_service(
            ProviderServer::new(provider)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(GrpcControllerServer::new(Controller { stop: stop.clone() }))
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |key| map.get(key).cloned()
    }

    #[test]
    fn a_start_outside_terraform_says_what_this_binary_is() {
        let err = Handshake::from_env(env(&[])).unwrap_err();
        assert!(err.to_string().contains("Terraform starts it"), "{err}");
    }

    #[test]
    fn a_terraform_without_protocol_6_or_a_client_certificate_is_refused() {
        let err = Handshake::from_env(env(&[
            (MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE),
            ("PLUGIN_PROTOCOL_VERSIONS", "4,5"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("\"4,5\""), "{err}");
        let err = Handshake::from_env(env(&[
            (MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE),
            ("PLUGIN_PROTOCOL_VERSIONS", "5,6"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("mutual TLS"), "{err}");
        let (certificate, _) = server_certificate().unwrap();
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(certificate.as_ref())
        );
        let ok = Handshake::from_env(env(&[
            (MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE),
            ("PLUGIN_PROTOCOL_VERSIONS", "5,6"),
            ("PLUGIN_CLIENT_CERT", &pem),
        ]))
        .unwrap();
        assert_eq!(ok.client_certificate, certificate);
    }

    #[test]
    fn the_handshake_line_carries_the_certificate_without_padding() {
        let (certificate, _) = server_certificate().unwrap();
        let line = handshake_line("127.0.0.1:1234".parse().unwrap(), &certificate);
        let parts: Vec<&str> = line.split('|').collect();
        assert_eq!(&parts[..5], ["1", "6", "tcp", "127.0.0.1:1234", "grpc"]);
        assert!(!parts[5].ends_with('='));
        let der = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(parts[5])
            .unwrap();
        assert_eq!(der, certificate.as_ref());
    }

    #[test]
    fn a_p521_signature_is_verified_and_a_forged_one_refused() {
        use p521::ecdsa::signature::Signer as _;
        // A fixed P-521 key (ring cannot make one); Terraform's own is checked end to end.
        let mut secret = [7u8; 66];
        secret[0] = 0;
        let signing = p521::ecdsa::SigningKey::from_slice(&secret).unwrap();
        let point = p521::ecdsa::VerifyingKey::from(&signing)
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let signature: p521::ecdsa::Signature = signing.sign(b"transcript");
        let signature = signature.to_der();
        assert!(verify_p521_with(b"transcript", &point, signature.as_bytes()).is_ok());
        assert!(verify_p521_with(b"another transcript", &point, signature.as_bytes()).is_err());
        assert!(verify_p521_with(b"transcript", &point[1..], signature.as_bytes()).is_err());
        // A certificate that is not one is refused, not a panic.
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(verify_p521(b"transcript", &junk, signature.as_bytes()).is_err());
    }
}

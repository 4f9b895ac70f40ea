//! A rogue gateway for whole-mesh tests: a genuine gateway certificate of a cluster `rogue`
//! under the mesh's root, speaking the peer protocol by hand, so a test can send what a real
//! gateway never would (garbage, a skewed clock, a policy set of its own).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Result, anyhow, ensure};
use quinn::crypto::rustls::QuicClientConfig;
use strait_federation::catalog::Position;
use strait_federation::handshake;
use strait_federation::identity::{ClusterName, Role, SpiffeId, TrustDomain};
use strait_federation::pki::{ISSUER_LIFETIME, LEAF_LIFETIME};
use strait_federation::proto::peer::PeerFrame;
use strait_federation::proto::peer::peer_frame::Body;
use strait_federation::tls::{self, CertStore, PEER_ALPN, PeerRule};
use strait_federation::wire::{FrameDecoder, encode};

use crate::Mesh;

/// A QUIC endpoint holding a genuine gateway certificate of cluster `rogue` under the mesh's
/// root, for dialing the gateway of `target`.
pub fn rogue_endpoint(mesh: &Mesh, target: &str) -> Result<(quinn::Endpoint, quinn::ClientConfig)> {
    tls::install_default_provider();
    let td = TrustDomain::new("example.mesh")?;
    let root = strait_io::pki::load_root(&mesh.trust, td.clone())?;
    let rogue = ClusterName::new("rogue")?;
    let issuer = root.issue_cluster(&rogue, ISSUER_LIFETIME, SystemTime::now())?;
    let credential = issuer.issue(
        &SpiffeId::gateway(&td, &rogue),
        LEAF_LIFETIME,
        SystemTime::now(),
    )?;
    let bundle = strait_io::pki::read_bundle(&mesh.trust.join("bundle.pem"), td)?;
    let tls = tls::client_config(
        &tls::TrustStore::new(bundle.clone())?,
        &CertStore::new(&credential)?,
        PeerRule::role_in(Role::Gateway, ClusterName::new(target)?),
        &[PEER_ALPN],
    )?;
    let client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    Ok((endpoint, client))
}

/// The join token of a Link document that `target` mints.
pub fn join_token(mesh: &Mesh, target: &str) -> Result<String> {
    let document = mesh.ctl(target, &["link"]).success()?;
    let value: serde_json::Value = serde_saphyr::from_str(&document)?;
    Ok(value["spec"]["token"]
        .as_str()
        .ok_or_else(|| anyhow!("no spec.token in {document}"))?
        .to_owned())
}

/// A rogue peer welcomed by a gateway: its control stream, to write frames by hand.
pub struct RoguePeer {
    pub endpoint: quinn::Endpoint,
    pub connection: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

impl RoguePeer {
    /// Dials the gateway of `target` at `address` as cluster `rogue` with a Link token that
    /// `target` minted, and waits for its welcome.
    pub async fn join(mesh: &Mesh, target: &str, address: SocketAddr) -> Result<Self> {
        let token = join_token(mesh, target)?;
        let (endpoint, client) = rogue_endpoint(mesh, target)?;
        let connection = endpoint.connect_with(client, address, target)?.await?;
        let (mut send, mut recv) = connection.open_bi().await?;
        send.write_all(&encode(&handshake::hello(
            &ClusterName::new("rogue")?,
            &token,
            Position::NONE,
        )))
        .await?;
        let mut decoder = FrameDecoder::default();
        let mut buffer = vec![0u8; 4096];
        let first = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(frame) = decoder.next_frame()? {
                    return Ok::<_, anyhow::Error>(frame);
                }
                let n = recv
                    .read(&mut buffer)
                    .await?
                    .ok_or_else(|| anyhow!("stream closed"))?;
                decoder.extend(&buffer[..n]);
            }
        })
        .await??;
        ensure!(
            matches!(first.body, Some(Body::Welcome(_))),
            "the rogue was not welcomed: {first:?}"
        );
        Ok(Self {
            endpoint,
            connection,
            send,
            recv,
        })
    }

    /// Writes one frame on the control stream.
    pub async fn send(&mut self, frame: &PeerFrame) -> Result<()> {
        self.send.write_all(&encode(frame)).await?;
        Ok(())
    }
}

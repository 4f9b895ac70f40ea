//! Peers that misbehave: garbage, oversized frames, bad handshakes. Each is dropped, and the
//! gateway's other peerings carry on.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use strait_federation::catalog::Position;
use strait_federation::handshake;
use strait_federation::identity::ClusterName;
use strait_federation::wire::encode;
use strait_tests::rogue::{RoguePeer, rogue_endpoint};
use strait_tests::{Mesh, metric, service, wait_for};

/// Sends `bytes` on a new control stream and waits for the gateway to close the connection.
async fn closed_after(
    endpoint: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    to: SocketAddr,
    bytes: &[u8],
) -> Result<String> {
    let connection = endpoint.connect_with(client.clone(), to, "west")?.await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    send.write_all(bytes).await?;
    let _ = send.finish();
    // Whatever the gateway answers, it must end the connection promptly.
    let answer = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20))
        .await
        .context("the gateway kept a misbehaving peer's stream open")?;
    let reason = tokio::time::timeout(Duration::from_secs(5), connection.closed())
        .await
        .context("the gateway kept a misbehaving peer connected")?;
    Ok(format!("{answer:?} / {reason}"))
}

#[test]
fn a_peer_sending_garbage_or_oversized_frames_is_dropped_without_harming_the_others() -> Result<()>
{
    let mesh = Mesh::new()?;
    let mut west = mesh.start("west", None)?;
    let mut east = mesh.start("east", None)?;
    mesh.link("east", "west")?;
    mesh.apply("west", "api.yaml", &service("shop", "api", true, 8080))
        .success()?;
    mesh.wait_served("east", "shop/api", &["west"], Duration::from_secs(10))?;

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let (endpoint, client) = rogue_endpoint(&mesh, "west")?;
        // Not a frame at all.
        closed_after(
            &endpoint,
            &client,
            west.quic,
            &[0, 0, 0, 7, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0xfa, 0xf9],
        )
        .await?;
        // A length far above the limit: refused before the body is buffered.
        closed_after(&endpoint, &client, west.quic, &0xffff_fff0u32.to_be_bytes()).await?;
        // A well-formed frame that is not a hello.
        closed_after(
            &endpoint,
            &client,
            west.quic,
            &encode(&handshake::welcome(
                &ClusterName::new("rogue")?,
                Position::NONE,
            )),
        )
        .await?;

        // A genuine peer (valid token) that turns hostile after the handshake.
        let mut hostile = RoguePeer::join(&mesh, "west", west.quic).await?;
        hostile.send.write_all(&(64u32 << 20).to_be_bytes()).await?;
        hostile.send.write_all(&[0u8; 1024]).await?;
        tokio::time::timeout(Duration::from_secs(5), hostile.connection.closed())
            .await
            .context("an oversized frame mid-session did not end the session")?;

        // Bytes that are not QUIC at all, at the QUIC port.
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        for size in [1usize, 20, 1200, 65000] {
            socket.send_to(&vec![0x5a; size], west.quic)?;
        }
        endpoint.close(0u32.into(), b"done");
        Ok::<_, anyhow::Error>(())
    })?;

    // The real peering never noticed.
    ensure!(mesh.link_state("east", "west")? == "connected");
    mesh.apply("west", "web.yaml", &service("shop", "web", true, 8080))
        .success()?;
    wait_for(
        Duration::from_secs(10),
        "shop/web in east after the attacks",
        || Ok((mesh.served_from("east", "shop/web")? == ["west"]).then_some(())),
    )?;
    let metrics = west.metrics()?;
    ensure!(
        metric(
            &metrics,
            "strait_link_refusals_total",
            &["reason=\"protocol\""]
        )
        .unwrap_or(0.0)
            >= 3.0,
        "{metrics}"
    );
    ensure!(
        metric(
            &metrics,
            "strait_peer_sessions_ended_total",
            &["peer=\"rogue\"", "reason=\"protocol\""]
        ) == Some(1.0),
        "{metrics}"
    );
    west.stop()?;
    east.stop()?;
    Ok(())
}

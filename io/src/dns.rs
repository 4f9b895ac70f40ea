//! A DNS probe: one query over UDP, for a process to ask whether a DNS server answers.

use std::net::SocketAddr;
use std::time::Duration;

/// Asks a DNS server for a name's SOA over UDP; the rcode of its answer, or why none came
/// within `limit`.
pub async fn soa_rcode(server: SocketAddr, name: &str, limit: Duration) -> Result<u8, String> {
    let id = crate::random::random_u64() as u16;
    let mut packet = Vec::with_capacity(64);
    packet.extend_from_slice(&id.to_be_bytes());
    // Flags: a standard query, recursion not desired; one question.
    packet.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    // Root, type SOA, class IN.
    packet.extend_from_slice(&[0, 0, 6, 0, 1]);
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("a constant address")
    } else {
        "[::]:0".parse().expect("a constant address")
    };
    let socket = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    socket
        .send_to(&packet, server)
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = [0u8; 512];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let received = tokio::time::timeout_at(deadline, socket.recv_from(&mut answer)).await;
        let (len, from) = match received {
            Ok(Ok(received)) => received,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {limit:?}")),
        };
        // Anything else (a stray datagram, another query's answer) is not ours.
        if from == server && len >= 12 && answer[..2] == id.to_be_bytes() && answer[2] & 0x80 != 0 {
            return Ok(answer[3] & 0x0f);
        }
    }
}

//! Transparent interception on the outbound path: a connection iptables redirected goes to the
//! mesh service whose endpoint (or virtual address) it was addressed to, as HTTP when its
//! first bytes are, as TCP otherwise; or straight to its original destination when that is not
//! in the mesh.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::http_proxy::serve_http_connection;
use super::tcp::{TcpError, proxy_tcp};
use crate::{Shared, accept_each};

/// How long a redirected connection may stay silent before it is taken for a protocol where
/// the server speaks first (and proxied as TCP).
const DETECT_TIMEOUT: Duration = Duration::from_millis(300);

/// Why a redirected connection failed.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    /// To a mesh service.
    #[error(transparent)]
    Mesh(#[from] TcpError),
    /// To its original destination, outside the mesh.
    #[error(transparent)]
    Passthrough(#[from] PassthroughError),
}

/// Why a connection to a destination outside the mesh failed.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    #[error("{0}: connect timed out")]
    TimedOut(SocketAddr),
    #[error("{original}: {error}")]
    Connect {
        original: SocketAddr,
        #[source]
        error: std::io::Error,
    },
    /// The bytes stopped flowing with an error.
    #[error(transparent)]
    Copy(std::io::Error),
}

/// Serves the transparent listener (iptables REDIRECT): each connection goes to the mesh
/// service whose endpoint it was addressed to, or straight to its original destination when
/// that is not in the mesh.
pub async fn serve_transparent(shared: Arc<Shared>, listener: TcpListener) {
    let each = shared.clone();
    let limit = shared.limits.outbound.clone();
    accept_each(shared, listener, &limit, move |tcp, _| {
        transparent(each.clone(), tcp)
    })
    .await;
}

/// One redirected connection.
async fn transparent(shared: Arc<Shared>, tcp: TcpStream) {
    let original = match original_destination(&tcp) {
        Ok(address) => address,
        Err(e) => {
            tracing::info!(error = %e, "no original destination: not a redirected connection");
            return;
        }
    };
    let service = {
        let directory = shared.directory.borrow();
        if directory.is_stale_virtual(&original.ip()) {
            tracing::info!(destination = %original, "a virtual address that names nothing now (a stale DNS answer?): refused");
            return;
        }
        if directory.is_virtual(&original.ip()) {
            // A name the gateway's DNS answered: the address stands for it, port and all.
            Some(original.to_string())
        } else {
            directory.service_at(&original).and_then(|entry| {
                let port = entry.ports.first()?.port;
                Some(format!("{}.{}:{port}", entry.key.name, entry.key.namespace))
            })
        }
    };
    let result: Result<(), RedirectError> = match service {
        Some(name) => {
            if speaks_http(&tcp).await {
                serve_http_connection(shared, tcp, Some(name)).await;
                Ok(())
            } else {
                proxy_tcp(&shared, tcp, &name).await.map_err(Into::into)
            }
        }
        _ => passthrough(tcp, original).await.map_err(Into::into),
    };
    if let Err(e) = result {
        tracing::info!(destination = %original, error = %e, "redirected connection failed");
    }
}

/// Whether the app's first bytes are HTTP/1 (a method and a space) or the HTTP/2 preface.
pub fn looks_like_http(first: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"TRACE ",
        b"PRI * HTTP/2",
    ];
    METHODS
        .iter()
        .any(|m| first.len() >= m.len().min(8) && first.starts_with(&m[..m.len().min(first.len())]))
}

/// Peeks at a redirected connection's first bytes, without consuming them.
async fn speaks_http(tcp: &TcpStream) -> bool {
    let mut first = [0u8; 16];
    match tokio::time::timeout(DETECT_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(n)) => looks_like_http(&first[..n]),
        _ => false,
    }
}

/// The destination a redirected connection was addressed to (SO_ORIGINAL_DST).
pub(crate) fn original_destination(tcp: &TcpStream) -> std::io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(tcp);
    let address = match tcp.local_addr()? {
        SocketAddr::V4(_) => socket.original_dst_v4()?,
        SocketAddr::V6(_) => socket.original_dst_v6()?,
    };
    address
        .as_socket()
        .ok_or_else(|| std::io::Error::other("original destination is not an IP address"))
}

/// Connects a redirected connection to its original destination, outside the mesh.
async fn passthrough(mut app: TcpStream, original: SocketAddr) -> Result<(), PassthroughError> {
    let mut upstream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(original))
        .await
        .map_err(|_| PassthroughError::TimedOut(original))?
        .map_err(|error| PassthroughError::Connect { original, error })?;
    tokio::io::copy_bidirectional(&mut app, &mut upstream)
        .await
        .map(|_| ())
        .map_err(PassthroughError::Copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_is_told_from_other_protocols_by_its_first_bytes() {
        for http in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /x HTTP/1.1",
            b"DELETE /a HTTP/1.1",
            b"PRI * HTTP/2.0\r\n\r\nSM",
        ] {
            assert!(looks_like_http(http), "{:?}", String::from_utf8_lossy(http));
        }
        for other in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"SSH-2.0-OpenSSH",
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
            b"GE",
            b"",
            b"GETX / HTTP/1.1",
        ] {
            assert!(
                !looks_like_http(other),
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn a_failed_passthrough_names_the_original_destination() {
        let original: SocketAddr = "10.9.8.7:443".parse().unwrap();
        assert_eq!(
            PassthroughError::TimedOut(original).to_string(),
            "10.9.8.7:443: connect timed out"
        );
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            PassthroughError::Connect {
                original,
                error: refused
            }
            .to_string(),
            "10.9.8.7:443: refused"
        );
    }
}

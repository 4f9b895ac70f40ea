//! The header of a data flow: which service in which cluster a relayed connection is for. A
//! sidecar sends it to its gateway's relay, and that gateway to the peer gateway at the start of
//! the flow's QUIC stream; the answer says whether the far end found an endpoint. After the
//! answer only the sidecars' own TLS bytes follow.

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::catalog::ServiceKey;
use crate::identity::{ClusterName, Namespace, ServiceName};
use crate::proto::peer::{FlowOpen, FlowReply};

/// The largest flow header or answer (names are at most 253 bytes each).
pub const MAX_FLOW_FRAME: usize = 2048;

/// Why a flow header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("flow header of {0} bytes is larger than the limit of {MAX_FLOW_FRAME}")]
    TooLarge(usize),
    #[error("flow header is malformed: {0}")]
    Malformed(String),
    #[error("flow header field {field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error("reading the flow header: {0}")]
    Io(#[from] std::io::Error),
}

/// Where a flow goes, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowTarget {
    pub cluster: ClusterName,
    pub service: ServiceKey,
    pub port: u16,
    /// One endpoint by hostname; `None`: any ready endpoint.
    pub hostname: Option<String>,
    /// The cluster the flow comes from, as the opening gateway said (a receiving gateway uses
    /// the authenticated peer instead).
    pub source_cluster: Option<ClusterName>,
}

impl FlowTarget {
    /// The wire form.
    pub fn to_wire(&self) -> FlowOpen {
        FlowOpen {
            cluster: self.cluster.to_string(),
            namespace: self.service.namespace.to_string(),
            service: self.service.name.to_string(),
            port: u32::from(self.port),
            hostname: self.hostname.clone().unwrap_or_default(),
            source_cluster: self
                .source_cluster
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        }
    }

    /// Checks a header received from the network.
    pub fn from_wire(open: &FlowOpen) -> Result<Self, FlowError> {
        let field = |field: &'static str| {
            move |e: crate::identity::NameError| FlowError::Field {
                field,
                message: e.to_string(),
            }
        };
        let port = u16::try_from(open.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| FlowError::Field {
                field: "port",
                message: format!("expected 1..65535, got {}", open.port),
            })?;
        let hostname = if open.hostname.is_empty() {
            None
        } else if open.hostname.len() > crate::catalog::MAX_TEXT {
            return Err(FlowError::Field {
                field: "hostname",
                message: "longer than 253 bytes".into(),
            });
        } else {
            Some(open.hostname.clone())
        };
        let source_cluster = if open.source_cluster.is_empty() {
            None
        } else {
            Some(ClusterName::new(open.source_cluster.clone()).map_err(field("sourceCluster"))?)
        };
        Ok(Self {
            cluster: ClusterName::new(open.cluster.clone()).map_err(field("cluster"))?,
            service: ServiceKey {
                namespace: Namespace::new(open.namespace.clone()).map_err(field("namespace"))?,
                name: ServiceName::new(open.service.clone()).map_err(field("service"))?,
            },
            port,
            hostname,
            source_cluster,
        })
    }
}

/// Writes one header or answer: a 2-byte length, then the protobuf message.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &impl Message,
) -> std::io::Result<()> {
    let body = message.encode_to_vec();
    let mut out = Vec::with_capacity(2 + body.len());
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    writer.write_all(&out).await?;
    writer.flush().await
}

/// Reads one header or answer, refusing lengths above [`MAX_FLOW_FRAME`] before buffering them.
pub async fn read_frame<R: AsyncRead + Unpin, M: Message + Default>(
    reader: &mut R,
) -> Result<M, FlowError> {
    let mut len = [0u8; 2];
    reader.read_exact(&mut len).await?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > MAX_FLOW_FRAME {
        return Err(FlowError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    M::decode(body.as_slice()).map_err(|e| FlowError::Malformed(e.to_string()))
}

/// Reads a flow header and checks it.
pub async fn read_open<R: AsyncRead + Unpin>(reader: &mut R) -> Result<FlowTarget, FlowError> {
    let open: FlowOpen = read_frame(reader).await?;
    FlowTarget::from_wire(&open)
}

/// Reads the answer to a flow header: `Ok` when the far end has an endpoint.
pub async fn read_reply<R: AsyncRead + Unpin>(reader: &mut R) -> Result<(), String> {
    match read_frame::<_, FlowReply>(reader).await {
        Ok(reply) if reply.ok => Ok(()),
        Ok(reply) => Err(reply.error),
        Err(e) => Err(e.to_string()),
    }
}

/// An answer refusing a flow.
pub fn refusal(error: impl Into<String>) -> FlowReply {
    FlowReply {
        ok: false,
        error: error.into(),
    }
}

/// An answer accepting a flow.
pub fn accepted() -> FlowReply {
    FlowReply {
        ok: true,
        error: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> FlowTarget {
        FlowTarget {
            cluster: ClusterName::new("west").unwrap(),
            service: ServiceKey {
                namespace: Namespace::new("shop").unwrap(),
                name: ServiceName::new("api").unwrap(),
            },
            port: 80,
            hostname: Some("api-0".into()),
            source_cluster: Some(ClusterName::new("east").unwrap()),
        }
    }

    #[tokio::test]
    async fn a_header_round_trips_through_a_byte_stream() {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &target().to_wire()).await.unwrap();
        write_frame(&mut bytes, &accepted()).await.unwrap();
        let mut reader = bytes.as_slice();
        assert_eq!(read_open(&mut reader).await.unwrap(), target());
        assert_eq!(read_reply(&mut reader).await, Ok(()));
    }

    #[tokio::test]
    async fn an_oversized_header_is_refused_before_it_is_read() {
        let bytes = [0xff, 0xff, 1, 2, 3];
        let error = read_open(&mut &bytes[..]).await.unwrap_err();
        assert!(matches!(error, FlowError::TooLarge(65535)), "{error}");
    }

    #[tokio::test]
    async fn a_header_with_a_bad_name_or_port_names_the_field() {
        let mut open = target().to_wire();
        open.namespace = "Not_A_Label".into();
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &open).await.unwrap();
        let error = read_open(&mut bytes.as_slice()).await.unwrap_err();
        assert!(error.to_string().contains("namespace"), "{error}");

        let mut open = target().to_wire();
        open.port = 70000;
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &open).await.unwrap();
        let error = read_open(&mut bytes.as_slice()).await.unwrap_err();
        assert!(error.to_string().contains("port"), "{error}");
    }

    #[tokio::test]
    async fn a_refusal_carries_the_far_ends_reason() {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &refusal("no ready endpoint of shop/api"))
            .await
            .unwrap();
        assert_eq!(
            read_reply(&mut bytes.as_slice()).await,
            Err("no ready endpoint of shop/api".into())
        );
    }
}

//! A relayed flow's header and its answer on a byte stream (a sidecar's TCP connection to its
//! gateway's relay, or a QUIC stream between gateways): the framing is federation's, the reads
//! and writes are here.

use prost::Message;
use strait_federation::flow::{
    self, FlowError, FlowRefused, FlowTarget, decode_frame, encode_frame, frame_length,
};
use strait_federation::proto::peer::{FlowOpen, FlowReply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Writes one header or answer: a 2-byte length, then the protobuf message.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &impl Message,
) -> std::io::Result<()> {
    writer.write_all(&encode_frame(message)).await?;
    writer.flush().await
}

/// Reads one header or answer, refusing lengths above the limit before buffering them.
pub async fn read_frame<R: AsyncRead + Unpin, M: Message + Default>(
    reader: &mut R,
) -> Result<M, FlowError> {
    let mut prefix = [0u8; 2];
    reader.read_exact(&mut prefix).await?;
    let mut body = vec![0u8; frame_length(prefix)?];
    reader.read_exact(&mut body).await?;
    decode_frame(&body)
}

/// Reads a flow header and checks it.
pub async fn read_open<R: AsyncRead + Unpin>(reader: &mut R) -> Result<FlowTarget, FlowError> {
    let open: FlowOpen = read_frame(reader).await?;
    FlowTarget::from_wire(&open)
}

/// Reads the answer to a flow header: `Ok` when the far end has an endpoint.
pub async fn read_reply<R: AsyncRead + Unpin>(reader: &mut R) -> Result<(), FlowRefused> {
    match read_frame::<_, FlowReply>(reader).await {
        Ok(reply) => flow::outcome(reply),
        Err(e) => Err(FlowRefused::Answer(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_federation::catalog::ServiceKey;
    use strait_federation::flow::{accepted, refusal};
    use strait_federation::identity::{ClusterName, Namespace, ServiceName};

    /// A flow to any endpoint: no hostname, and no source cluster (as a sidecar sends it).
    fn target() -> FlowTarget {
        let name = |text: &str| ServiceName::new(text).unwrap();
        FlowTarget {
            cluster: ClusterName::new("east").unwrap(),
            service: ServiceKey {
                namespace: Namespace::new("payments").unwrap(),
                name: name("ledger"),
            },
            port: 8443,
            hostname: None,
            source_cluster: None,
            forwarded: false,
            trace: None,
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
    async fn a_truncated_answer_is_an_answer_error() {
        let bytes = [0, 9, 1];
        let error = read_reply(&mut &bytes[..]).await.unwrap_err();
        assert!(matches!(error, FlowRefused::Answer(_)), "{error}");
    }

    #[tokio::test]
    async fn a_refusal_carries_the_far_ends_reason() {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &refusal("no ready endpoint of shop/api"))
            .await
            .unwrap();
        assert_eq!(
            read_reply(&mut bytes.as_slice()).await,
            Err(FlowRefused::Refused("no ready endpoint of shop/api".into()))
        );
    }
}

//! The header of a data flow: which service in which cluster a relayed connection is for. A
//! sidecar sends it to its gateway's relay, and that gateway to the peer gateway at the start of
//! the flow's QUIC stream; the answer says whether the far end found an endpoint. After the
//! answer only the sidecars' own TLS bytes follow.

use prost::Message;

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
    /// Handed on by another replica of this cluster's gateway: not to be handed on again.
    pub forwarded: bool,
    /// The sampled request this flow carries alone, for the gateways to record their hops.
    pub trace: Option<crate::trace::FlowTrace>,
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
            forwarded: self.forwarded,
            trace: self.trace.as_ref().map(crate::trace::FlowTrace::to_wire),
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
            forwarded: open.forwarded,
            // A malformed trace leaves the flow untraced, never refused.
            trace: open
                .trace
                .as_ref()
                .and_then(crate::trace::FlowTrace::from_wire),
        })
    }
}

/// One header or answer as bytes: a 2-byte length, then the protobuf message.
pub fn encode_frame(message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = Vec::with_capacity(2 + body.len());
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The length a frame's 2-byte prefix announces, refused above [`MAX_FLOW_FRAME`] before
/// anything is buffered.
pub fn frame_length(prefix: [u8; 2]) -> Result<usize, FlowError> {
    let len = usize::from(u16::from_be_bytes(prefix));
    if len > MAX_FLOW_FRAME {
        return Err(FlowError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes a frame's body.
pub fn decode_frame<M: Message + Default>(body: &[u8]) -> Result<M, FlowError> {
    M::decode(body).map_err(|e| FlowError::Malformed(e.to_string()))
}

/// Why the far end of a flow did not take it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlowRefused {
    /// The far end's own reason, as it sent it.
    #[error("{0}")]
    Refused(String),
    /// The answer itself could not be read.
    #[error("{0}")]
    Answer(String),
}

/// What an answer says: `Ok` when the far end has an endpoint.
pub fn outcome(reply: FlowReply) -> Result<(), FlowRefused> {
    if reply.ok {
        Ok(())
    } else {
        Err(FlowRefused::Refused(reply.error))
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
            forwarded: true,
            trace: None,
        }
    }

    #[test]
    fn a_header_round_trips_through_its_bytes() {
        let bytes = encode_frame(&target().to_wire());
        let len = frame_length([bytes[0], bytes[1]]).unwrap();
        assert_eq!(len, bytes.len() - 2);
        let open: FlowOpen = decode_frame(&bytes[2..]).unwrap();
        assert_eq!(FlowTarget::from_wire(&open).unwrap(), target());
    }

    #[test]
    fn an_oversized_length_is_refused() {
        assert!(matches!(
            frame_length([0xff, 0xff]),
            Err(FlowError::TooLarge(65535))
        ));
    }

    #[test]
    fn a_header_with_a_bad_name_or_port_names_the_field() {
        let mut open = target().to_wire();
        open.namespace = "Not_A_Label".into();
        let error = FlowTarget::from_wire(&open).unwrap_err();
        assert!(error.to_string().contains("namespace"), "{error}");

        let mut open = target().to_wire();
        open.port = 70000;
        let error = FlowTarget::from_wire(&open).unwrap_err();
        assert!(error.to_string().contains("port"), "{error}");
    }

    #[test]
    fn a_refusal_carries_the_far_ends_reason() {
        assert_eq!(outcome(accepted()), Ok(()));
        assert_eq!(
            outcome(refusal("no ready endpoint of shop/api"))
                .unwrap_err()
                .to_string(),
            "no ready endpoint of shop/api"
        );
    }
}

//! What a gateway's relay must do with any bytes at the start of a flow (the header a sidecar
//! or a peer gateway sends, and the answer that comes back), shared by the mutation test
//! (federation/tests/decoder_mutations.rs) and the cargo-fuzz target `flow_header` (which
//! includes this file). The reads mirror `strait_io::flow`: a 2-byte length, refused above
//! the limit before anything is buffered, then the protobuf message.

use prost::Message;
use strait_federation::catalog::MAX_TEXT;
use strait_federation::flow::{
    self, FlowError, FlowRefused, FlowTarget, MAX_FLOW_FRAME, decode_frame, encode_frame,
    frame_length,
};
use strait_federation::identity::{ClusterName, Namespace, ServiceName};
use strait_federation::proto::peer::{FlowOpen, FlowReply};

use super::allocation::{assert_bounded, peak_during};

/// How reading one frame from the stream ended.
#[derive(Debug)]
pub enum Read<M> {
    /// The stream ended before the frame did.
    Short,
    Done(Result<M, FlowError>),
}

/// Reads one frame as the relay does; the bytes after it.
pub fn read_frame<M: Message + Default>(stream: &[u8]) -> (Read<M>, &[u8]) {
    let Some((prefix, rest)) = stream.split_first_chunk::<2>() else {
        return (Read::Short, &[]);
    };
    let len = match frame_length(*prefix) {
        Ok(len) => len,
        Err(e) => return (Read::Done(Err(e)), rest),
    };
    if rest.len() < len {
        return (Read::Short, &[]);
    }
    let (body, rest) = rest.split_at(len);
    (Read::Done(decode_frame(body)), rest)
}

/// Checks every invariant on the first bytes of a flow: a header, then (as the far end's
/// answer) whatever follows it.
pub fn check(stream: &[u8]) {
    let ((header, rest), peak) = peak_during(|| read_frame::<FlowOpen>(stream));
    assert_bounded("reading a flow header", stream.len(), peak, 256, 16 << 10);
    let announced = stream
        .first_chunk::<2>()
        .map(|prefix| usize::from(u16::from_be_bytes(*prefix)));
    match header {
        Read::Short => assert!(
            announced.is_none_or(|len| len <= MAX_FLOW_FRAME && stream.len() < 2 + len),
            "a whole header was taken for a short one"
        ),
        Read::Done(Err(FlowError::TooLarge(len))) => {
            assert_eq!(Some(len), announced);
            assert!(len > MAX_FLOW_FRAME);
        }
        Read::Done(Err(FlowError::Malformed(_))) => {}
        Read::Done(Err(e)) => panic!("reading a header from bytes failed with {e}"),
        Read::Done(Ok(open)) => {
            assert!(announced.is_some_and(|len| len <= MAX_FLOW_FRAME));
            check_target(&open);
        }
    }
    let (reply, _) = read_frame::<FlowReply>(rest);
    if let Read::Done(Ok(reply)) = reply {
        let ok = reply.ok;
        let error = reply.error.clone();
        match flow::outcome(reply) {
            Ok(()) => assert!(ok),
            Err(FlowRefused::Refused(reason)) => assert!(!ok && reason == error),
            Err(FlowRefused::Answer(_)) => panic!("an answer read is not an answer error"),
        }
    }
}

/// A header the relay accepts names a valid cluster, service and port, and means the same
/// after going round the wire again.
pub fn check_target(open: &FlowOpen) {
    let Ok(target) = FlowTarget::from_wire(open) else {
        return;
    };
    assert!(ClusterName::new(target.cluster.to_string()).is_ok());
    assert!(Namespace::new(target.service.namespace.to_string()).is_ok());
    assert!(ServiceName::new(target.service.name.to_string()).is_ok());
    assert_ne!(target.port, 0);
    assert_eq!(u32::from(target.port), open.port);
    assert!(
        target
            .hostname
            .as_ref()
            .is_none_or(|h| !h.is_empty() && h.len() <= MAX_TEXT)
    );
    assert_eq!(target.forwarded, open.forwarded);
    let bytes = encode_frame(&target.to_wire());
    assert!(
        bytes.len() - 2 <= MAX_FLOW_FRAME,
        "a header too large to send again"
    );
    let (again, rest) = read_frame::<FlowOpen>(&bytes);
    assert!(rest.is_empty());
    let Read::Done(Ok(again)) = again else {
        panic!("a header sent again does not read: {again:?}");
    };
    let again = FlowTarget::from_wire(&again).expect("a header sent again is taken");
    assert_eq!(again, target, "a header changed going round the wire");
}

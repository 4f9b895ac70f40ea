//! What the peer protocol must do with any bytes a peer sends on its control stream, shared by
//! the mutation test (federation/tests/decoder_mutations.rs) and the cargo-fuzz target
//! `peer_frames` (which includes this file): the frame decoder against an independent reading
//! of the length prefixes, then the handshake parsers and a session fed every frame decoded.

use std::time::{Duration, Instant};

use prost::Message;
use strait_federation::catalog::{
    Endpoint, ExportLog, ImportedCatalog, Port, Position, Protocol, ServiceKey, ServiceSpec,
};
use strait_federation::handshake::{MAX_REPLICA, parse_hello, parse_welcome};
use strait_federation::identity::{ClusterName, Namespace, ServiceName};
use strait_federation::policy::exchange::PolicyBook;
use strait_federation::proto::peer::PeerFrame;
use strait_federation::session::{Event, PeerSession, SessionConfig};
use strait_federation::wire::{FrameDecoder, FrameError, MAX_FRAME, encode};

use super::allocation::{assert_bounded, peak_during};

/// What a decoder yields from a stream, in order, up to its first error.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Frame(PeerFrame),
    Error(FrameError),
}

/// Bounds small enough for short inputs to reach them.
pub fn session_config() -> SessionConfig {
    SessionConfig {
        max_services: 32,
        max_update_bytes: 64 << 10,
        max_endpoints: 256,
        ..SessionConfig::default()
    }
}

/// Reads the stream as the wire format says, without the decoder: a 4-byte big-endian length,
/// refused above [`MAX_FRAME`], then that many bytes of protobuf. Also how many more bytes the
/// next frame needs when the stream ends inside one.
pub fn reference(stream: &[u8]) -> (Vec<Decoded>, Option<usize>) {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let rest = &stream[at..];
        if rest.len() < 4 {
            return (out, Some(4 - rest.len()));
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > MAX_FRAME {
            out.push(Decoded::Error(FrameError::TooLarge(len)));
            return (out, None);
        }
        if rest.len() < 4 + len {
            return (out, Some(4 + len - rest.len()));
        }
        match PeerFrame::decode(&rest[4..4 + len]) {
            Ok(frame) => out.push(Decoded::Frame(frame)),
            Err(e) => {
                out.push(Decoded::Error(FrameError::Malformed(e.to_string())));
                return (out, None);
            }
        }
        at += 4 + len;
    }
}

/// Feeds the stream to a decoder in pieces of `piece` bytes (all at once when 0), taking every
/// frame as soon as it is whole; what came out, and what the decoder wanted at the end.
pub fn decode(stream: &[u8], piece: usize) -> (Vec<Decoded>, Option<usize>) {
    let mut decoder = FrameDecoder::default();
    let mut out = Vec::new();
    let pieces: Vec<&[u8]> = if piece == 0 {
        vec![stream]
    } else {
        stream.chunks(piece).collect()
    };
    for bytes in pieces {
        decoder.extend(bytes);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => out.push(Decoded::Frame(frame)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Decoded::Error(e));
                    return (out, None);
                }
            }
        }
    }
    // Nothing whole is left: the decoder waits for bytes, or says why it cannot.
    match decoder.wanted() {
        Ok(wanted) => {
            assert!(wanted > 0, "a whole frame was left in the decoder");
            (out, Some(wanted))
        }
        Err(e) => {
            out.push(Decoded::Error(e));
            (out, None)
        }
    }
}

/// Checks every invariant on one stream of bytes from a peer.
pub fn check(stream: &[u8]) {
    let (whole, peak) = peak_during(|| decode(stream, 0));
    // A frame decodes into at most a few hundred bytes per byte of it (an empty nested message
    // is 2 bytes on the wire and a struct of a few hundred in memory); never by a length the
    // peer states.
    assert_bounded("decoding peer frames", stream.len(), peak, 1024, 64 << 10);
    let piece = 1 + stream.len() % 7;
    let pieces = decode(stream, piece);
    let expected = reference(stream);
    assert_eq!(
        whole, expected,
        "the decoder disagrees with the wire format"
    );
    assert_eq!(pieces, expected, "pieces of {piece} bytes decode otherwise");

    let frames: Vec<PeerFrame> = whole
        .0
        .into_iter()
        .filter_map(|d| match d {
            Decoded::Frame(frame) => Some(frame),
            Decoded::Error(_) => None,
        })
        .collect();
    for frame in &frames {
        // What was read is what would be sent again: encoding then decoding changes nothing.
        let bytes = encode(frame);
        assert_eq!(bytes.len() - 4, frame.encoded_len());
        let again = PeerFrame::decode(&bytes[4..]).expect("a frame re-encoded decodes");
        assert_eq!(&again, frame, "a frame changed through encoding");
        check_handshake(frame);
    }
    let ((), peak) = peak_during(|| drive_session(frames));
    assert_bounded(
        "a session fed peer frames",
        stream.len(),
        peak,
        4096,
        1 << 20,
    );
}

/// A hello or welcome that is taken holds only what the checks allow.
fn check_handshake(frame: &PeerFrame) {
    if let Ok(hello) = parse_hello(frame.clone()) {
        assert!(ClusterName::new(hello.cluster.to_string()).is_ok());
        assert!(hello.join_token.len() <= 8192, "a join token over 8 KiB");
        check_replica(&hello.replica);
    }
    if let Ok(welcome) = parse_welcome(frame.clone()) {
        assert!(ClusterName::new(welcome.cluster.to_string()).is_ok());
        check_replica(&welcome.replica);
    }
}

fn check_replica(replica: &str) {
    assert!(
        replica.len() <= MAX_REPLICA,
        "a replica name of {}",
        replica.len()
    );
    assert!(
        replica
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')),
        "replica {replica:?}"
    );
}

/// One session (west's, holding east's imported catalog) fed the frames in order, as the
/// gateway feeds it, until one ends it: a refused frame leaves the catalog as it was, and what
/// the session answers stays within the frame limit.
fn drive_session(frames: Vec<PeerFrame>) {
    let config = session_config();
    let start = Instant::now();
    let mut export = ExportLog::new(7);
    export.set(&service_key(), Some(&service_spec()));
    let mut session = PeerSession::new(config.clone(), Position::NONE, &export, start);
    let mut imported = ImportedCatalog::default();
    let mut book = PolicyBook::default();
    let peer = ClusterName::new("east").expect("a cluster name");
    let mut now = start;
    for (i, frame) in frames.into_iter().enumerate() {
        now += Duration::from_millis(1);
        let before = imported.clone();
        match session.handle_frame(frame, now, &mut imported) {
            Err(_) => {
                assert_eq!(imported, before, "a refused frame changed the catalog");
                return;
            }
            Ok(Some(Event::Imported { position, .. })) => {
                assert_eq!(imported.position, position);
                assert!(imported.services.len() <= config.max_services);
                let endpoints: usize = imported.services.values().map(|s| s.endpoints.len()).sum();
                assert!(endpoints <= config.max_endpoints);
            }
            Ok(Some(Event::Policy(policy))) => {
                if session
                    .handle_policy(policy, &mut book, &peer, 1_000 + i as u64)
                    .is_err()
                {
                    return;
                }
            }
            Ok(_) => assert_eq!(imported, before, "only an update changes the catalog"),
        }
        while let Some(out) = session.poll_transmit(now) {
            assert!(
                encode(&out).len() <= MAX_FRAME + 4,
                "an answer over the limit"
            );
        }
    }
    // The timers still hold: silence past the idle timeout ends the session.
    assert!(session.handle_timeout(now + config.idle_timeout).is_err());
}

fn service_key() -> ServiceKey {
    ServiceKey {
        namespace: Namespace::new("shop").expect("a namespace"),
        name: ServiceName::new("api").expect("a service name"),
    }
}

/// What west exports, so the session has an update to send and acknowledgements to expect.
fn service_spec() -> ServiceSpec {
    ServiceSpec {
        export: true,
        ports: vec![Port {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Http,
        }],
        endpoints: vec![Endpoint {
            address: "10.0.0.1:8080".parse().expect("an address"),
            hostname: None,
            ready: true,
        }],
        labels: Default::default(),
        exported_at_ms: 0,
    }
}

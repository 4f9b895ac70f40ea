//! Framing of the peer protocol: each `PeerFrame` is prefixed by its length (4 bytes, big
//! endian). Frames above [`MAX_FRAME`] are refused before any byte of them is buffered.

use bytes::{Buf, BufMut, BytesMut};
use prost::Message;

use crate::proto::peer::PeerFrame;

/// The largest frame a peer may send (4 MiB). Updates are split well below it.
pub const MAX_FRAME: usize = 4 << 20;
/// The size an update frame aims at when an update is split.
pub const TARGET_FRAME: usize = 256 << 10;

/// Why bytes from a peer are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is larger than the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("frame is not a valid peer message: {0}")]
    Malformed(String),
}

/// Encodes one frame with its length prefix.
pub fn encode(frame: &PeerFrame) -> Vec<u8> {
    let len = frame.encoded_len();
    let mut out = Vec::with_capacity(4 + len);
    out.put_u32(len as u32);
    // Encoding into a Vec with enough capacity cannot fail.
    let _ = frame.encode(&mut out);
    out
}

/// Accumulates bytes from a stream and yields whole frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: BytesMut,
}

impl FrameDecoder {
    /// Adds bytes received from the peer.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// How many more bytes the next frame needs before [`FrameDecoder::next_frame`] can return
    /// it, so a reader can bound its reads; errors as soon as the length prefix is too large.
    pub fn wanted(&self) -> Result<usize, FrameError> {
        if self.buffer.len() < 4 {
            return Ok(4 - self.buffer.len());
        }
        let len = u32::from_be_bytes([
            self.buffer[0],
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
        ]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        Ok((4 + len).saturating_sub(self.buffer.len()))
    }

    /// The next whole frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<PeerFrame>, FrameError> {
        if self.wanted()? > 0 {
            return Ok(None);
        }
        let len = (&self.buffer[..4]).get_u32() as usize;
        self.buffer.advance(4);
        let body = self.buffer.split_to(len);
        PeerFrame::decode(body.freeze())
            .map(Some)
            .map_err(|e| FrameError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::peer::{KeepAlive, peer_frame::Body};

    #[test]
    fn frames_survive_being_split_at_any_byte() {
        let frame = PeerFrame {
            body: Some(Body::KeepAlive(KeepAlive {})),
        };
        let mut bytes = encode(&frame);
        bytes.extend(encode(&frame));
        for split in 0..bytes.len() {
            let mut decoder = FrameDecoder::default();
            decoder.extend(&bytes[..split]);
            let mut got = Vec::new();
            while let Some(f) = decoder.next_frame().unwrap() {
                got.push(f);
            }
            decoder.extend(&bytes[split..]);
            while let Some(f) = decoder.next_frame().unwrap() {
                got.push(f);
            }
            assert_eq!(got.len(), 2, "split at {split}");
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_the_body_arrives() {
        let mut decoder = FrameDecoder::default();
        decoder.extend(&(MAX_FRAME as u32 + 1).to_be_bytes());
        assert_eq!(decoder.wanted(), Err(FrameError::TooLarge(MAX_FRAME + 1)));
        assert!(decoder.next_frame().is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut decoder = FrameDecoder::default();
        decoder.extend(&[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decoder.next_frame(),
            Err(FrameError::Malformed(_))
        ));
    }
}

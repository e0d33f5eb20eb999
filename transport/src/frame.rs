//! Message framing: the bytes of one message on a QUIC stream.
//!
//! Every request and every response is exactly one frame, and each travels alone on its half of
//! a bidirectional stream (the stream's FIN ends it). The layout, version 1, big-endian:
//!
//! ```text
//!  0         1         2                       6
//! +---------+---------+-----------------------+--------------------------+
//! | version | type    | payload length (u32)  | payload (length bytes)   |
//! | = 0x01  | u8      | big-endian            |                          |
//! +---------+---------+-----------------------+--------------------------+
//! ```
//!
//! Types `0x00..=0x0F` are the transport's own ([`FrameType::HELLO`], [`FrameType::HELLO_ACK`],
//! [`FrameType::ERROR`]); `0x10..=0xFF` belong to the application (the XDR layer). The payload
//! length is capped by the receiver's `max_payload` (at most [`MAX_PAYLOAD_LIMIT`]), checked from
//! the header before any payload byte is buffered.
//!
//! Everything here is pure (no I/O): [`FrameHeader::parse`], [`Frame::decode`] and
//! [`Frame::encode`] are what the stream code and the fuzz target call.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// The frame format version this crate writes and accepts.
pub const FRAME_VERSION: u8 = 1;
/// Bytes of the fixed header: version, type, length.
pub const HEADER_LEN: usize = 6;
/// Largest payload any receiver can be configured to accept: 64 MiB.
pub const MAX_PAYLOAD_LIMIT: u32 = 64 << 20;
/// Default payload cap of a receiver: 16 MiB (an XDR batch is far smaller).
pub const DEFAULT_MAX_PAYLOAD: u32 = 16 << 20;

/// A message type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrameType(u8);

impl FrameType {
    /// Client greeting sent once per connection: payload is empty in version 1.
    pub const HELLO: FrameType = FrameType(0x01);
    /// Server answer to [`FrameType::HELLO`], sent after the peer passed authorization.
    pub const HELLO_ACK: FrameType = FrameType(0x02);
    /// Error response: payload is one retryable flag byte (0 or 1) and a UTF-8 message.
    pub const ERROR: FrameType = FrameType(0x03);
    /// First type number free for applications.
    pub const FIRST_APPLICATION: u8 = 0x10;

    /// An application message type; `None` for the transport's reserved range `0x00..=0x0F`.
    pub fn application(code: u8) -> Option<FrameType> {
        (code >= Self::FIRST_APPLICATION).then_some(FrameType(code))
    }

    /// The type byte.
    pub fn code(self) -> u8 {
        self.0
    }

    /// Whether the type belongs to the application range.
    pub fn is_application(self) -> bool {
        self.0 >= Self::FIRST_APPLICATION
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:02x}", self.0)
    }
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The version byte is not one this build speaks.
    #[error("frame version {found} is not supported (this build speaks version {FRAME_VERSION})")]
    UnsupportedVersion { found: u8 },
    /// The declared payload is larger than the receiver accepts.
    #[error("frame payload of {declared} bytes exceeds the limit of {limit} bytes")]
    TooLarge { declared: u32, limit: u32 },
    /// The stream ended inside a frame.
    #[error("stream ended after {got} of {expected} frame bytes")]
    Truncated { expected: usize, got: usize },
    /// Bytes follow the frame on a stream that carries exactly one.
    #[error("{extra} unexpected bytes after the frame")]
    TrailingBytes { extra: usize },
    /// The type byte is not valid where it appeared.
    #[error("unexpected frame type {found} ({context})")]
    UnexpectedType { found: FrameType, context: &'static str },
    /// An error frame whose payload does not follow its layout.
    #[error("malformed error frame: {0}")]
    MalformedError(&'static str),
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Message type.
    pub frame_type: FrameType,
    /// Payload length in bytes, already checked against the receiver's cap.
    pub payload_len: u32,
}

impl FrameHeader {
    /// Parses and checks the 6 header bytes against `max_payload`.
    pub fn parse(bytes: &[u8; HEADER_LEN], max_payload: u32) -> Result<FrameHeader, FrameError> {
        let [version, frame_type, l0, l1, l2, l3] = *bytes;
        if version != FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion { found: version });
        }
        let payload_len = u32::from_be_bytes([l0, l1, l2, l3]);
        let limit = max_payload.min(MAX_PAYLOAD_LIMIT);
        if payload_len > limit {
            return Err(FrameError::TooLarge { declared: payload_len, limit });
        }
        Ok(FrameHeader { frame_type: FrameType(frame_type), payload_len })
    }

    /// The 6 header bytes.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let [l0, l1, l2, l3] = self.payload_len.to_be_bytes();
        [FRAME_VERSION, self.frame_type.0, l0, l1, l2, l3]
    }
}

/// One message: a type and an opaque payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Message type.
    pub frame_type: FrameType,
    /// Opaque payload.
    pub payload: Bytes,
}

impl Frame {
    /// A frame of the given type.
    pub fn new(frame_type: FrameType, payload: impl Into<Bytes>) -> Frame {
        Frame { frame_type, payload: payload.into() }
    }

    /// The header of this frame; fails if the payload exceeds [`MAX_PAYLOAD_LIMIT`].
    pub fn header(&self) -> Result<FrameHeader, FrameError> {
        let len = u32::try_from(self.payload.len())
            .ok()
            .filter(|len| *len <= MAX_PAYLOAD_LIMIT)
            .ok_or(FrameError::TooLarge {
                declared: u32::try_from(self.payload.len()).unwrap_or(u32::MAX),
                limit: MAX_PAYLOAD_LIMIT,
            })?;
        Ok(FrameHeader { frame_type: self.frame_type, payload_len: len })
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), FrameError> {
        let header = self.header()?;
        out.reserve(HEADER_LEN + self.payload.len());
        out.put_slice(&header.to_bytes());
        out.put_slice(&self.payload);
        Ok(())
    }

    /// The encoded frame as one buffer.
    pub fn to_bytes(&self) -> Result<Bytes, FrameError> {
        let mut out = BytesMut::new();
        self.encode(&mut out)?;
        Ok(out.freeze())
    }

    /// Decodes one frame from the front of `buf`: `Ok(None)` if more bytes are needed, else the
    /// frame and the number of bytes it used. Never reads past the declared length.
    pub fn decode(buf: &[u8], max_payload: u32) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some(header_bytes) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = FrameHeader::parse(header_bytes, max_payload)?;
        let total = HEADER_LEN + header.payload_len as usize;
        let Some(payload) = buf.get(HEADER_LEN..total) else {
            return Ok(None);
        };
        Ok(Some((Frame::new(header.frame_type, Bytes::copy_from_slice(payload)), total)))
    }

    /// Decodes a buffer that must hold exactly one frame (a whole stream).
    pub fn decode_exact(buf: &[u8], max_payload: u32) -> Result<Frame, FrameError> {
        match Frame::decode(buf, max_payload)? {
            Some((frame, used)) if used == buf.len() => Ok(frame),
            Some((_, used)) => Err(FrameError::TrailingBytes { extra: buf.len() - used }),
            None => {
                let expected = buf
                    .first_chunk::<HEADER_LEN>()
                    .map(|h| HEADER_LEN + u32::from_be_bytes([h[2], h[3], h[4], h[5]]) as usize)
                    .unwrap_or(HEADER_LEN);
                Err(FrameError::Truncated { expected, got: buf.len() })
            }
        }
    }

    /// An error response frame.
    pub fn error(retryable: bool, message: &str) -> Frame {
        let mut payload = BytesMut::with_capacity(1 + message.len());
        payload.put_u8(u8::from(retryable));
        payload.put_slice(message.as_bytes());
        Frame::new(FrameType::ERROR, payload.freeze())
    }

    /// The (retryable, message) of an error frame.
    pub fn parse_error(&self) -> Result<(bool, String), FrameError> {
        if self.frame_type != FrameType::ERROR {
            return Err(FrameError::UnexpectedType {
                found: self.frame_type,
                context: "expected an error frame",
            });
        }
        let (flag, message) =
            self.payload.split_first().ok_or(FrameError::MalformedError("empty payload"))?;
        let retryable = match flag {
            0 => false,
            1 => true,
            _ => return Err(FrameError::MalformedError("retryable flag is not 0 or 1")),
        };
        let message = std::str::from_utf8(message)
            .map_err(|_| FrameError::MalformedError("message is not UTF-8"))?;
        Ok((retryable, message.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn app(code: u8) -> FrameType {
        FrameType::application(code).expect("application type")
    }

    #[test]
    fn golden_bytes_of_an_application_frame() {
        let frame = Frame::new(app(0x21), &b"abc"[..]);
        let bytes = frame.to_bytes().expect("encode");
        assert_eq!(&bytes[..], &[0x01, 0x21, 0, 0, 0, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn golden_bytes_of_hello_and_error_frames() {
        let hello = Frame::new(FrameType::HELLO, Bytes::new());
        assert_eq!(&hello.to_bytes().expect("encode")[..], &[1, 1, 0, 0, 0, 0]);
        let error = Frame::error(true, "busy");
        assert_eq!(
            &error.to_bytes().expect("encode")[..],
            &[1, 3, 0, 0, 0, 5, 1, b'b', b'u', b's', b'y']
        );
        assert_eq!(error.parse_error(), Ok((true, "busy".to_owned())));
    }

    #[test]
    fn golden_header_of_a_large_payload() {
        let header = FrameHeader { frame_type: app(0x10), payload_len: 0x0102_0304 };
        assert_eq!(header.to_bytes(), [1, 0x10, 1, 2, 3, 4]);
        assert_eq!(FrameHeader::parse(&header.to_bytes(), MAX_PAYLOAD_LIMIT), Ok(header));
    }

    #[test]
    fn reserved_types_are_not_application_types() {
        assert_eq!(FrameType::application(0x0F), None);
        assert!(app(0x10).is_application());
        assert!(!FrameType::HELLO.is_application());
    }

    #[test]
    fn decode_needs_more_bytes_until_the_frame_is_complete() {
        let bytes = Frame::new(app(0x10), &b"hello"[..]).to_bytes().expect("encode");
        for cut in 0..bytes.len() {
            assert_eq!(Frame::decode(&bytes[..cut], 1024), Ok(None), "cut at {cut}");
        }
        let (frame, used) = Frame::decode(&bytes, 1024).expect("decode").expect("complete");
        assert_eq!(used, bytes.len());
        assert_eq!(&frame.payload[..], b"hello");
    }

    #[test]
    fn wrong_version_is_refused() {
        assert_eq!(
            Frame::decode(&[2, 0x10, 0, 0, 0, 0], 1024),
            Err(FrameError::UnsupportedVersion { found: 2 })
        );
    }

    #[test]
    fn oversized_payload_is_refused_from_the_header() {
        assert_eq!(
            Frame::decode(&[1, 0x10, 0, 0, 4, 1], 1024),
            Err(FrameError::TooLarge { declared: 1025, limit: 1024 })
        );
        assert_eq!(
            Frame::decode(&[1, 0x10, 0xff, 0xff, 0xff, 0xff], u32::MAX),
            Err(FrameError::TooLarge { declared: u32::MAX, limit: MAX_PAYLOAD_LIMIT })
        );
    }

    #[test]
    fn decode_exact_refuses_trailing_and_truncated_bytes() {
        assert_eq!(
            Frame::decode_exact(&[1, 0x10, 0, 0, 0, 1, 7, 8], 1024),
            Err(FrameError::TrailingBytes { extra: 1 })
        );
        assert_eq!(
            Frame::decode_exact(&[1, 0x10, 0, 0, 0, 4, 7], 1024),
            Err(FrameError::Truncated { expected: 10, got: 7 })
        );
        assert_eq!(
            Frame::decode_exact(&[1], 1024),
            Err(FrameError::Truncated { expected: 6, got: 1 })
        );
    }

    #[test]
    fn malformed_error_frames_are_refused() {
        let empty = Frame::new(FrameType::ERROR, Bytes::new());
        assert!(matches!(empty.parse_error(), Err(FrameError::MalformedError(_))));
        let bad_flag = Frame::new(FrameType::ERROR, &[7u8, b'x'][..]);
        assert!(matches!(bad_flag.parse_error(), Err(FrameError::MalformedError(_))));
        let bad_utf8 = Frame::new(FrameType::ERROR, &[0u8, 0xff][..]);
        assert!(matches!(bad_utf8.parse_error(), Err(FrameError::MalformedError(_))));
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(code in 0x10u8.., payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let frame = Frame::new(app(code), payload);
            let bytes = frame.to_bytes().expect("encode");
            prop_assert_eq!(Frame::decode_exact(&bytes, 4096), Ok(frame));
        }

        #[test]
        fn decode_never_panics_and_never_overreads(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(Some((frame, used))) = Frame::decode(&bytes, 1024) {
                prop_assert!(used <= bytes.len());
                prop_assert_eq!(used, HEADER_LEN + frame.payload.len());
            }
        }
    }
}

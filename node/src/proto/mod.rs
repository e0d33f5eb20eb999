//! Aerospike's client wire protocol, as pure encoding and decoding (no I/O).
//!
//! Every message starts with an 8-byte proto header: version (2), type, and a 48-bit big-endian
//! body size. Type 1 carries info commands (text), type 2 admin (security) messages, type 3 an
//! AS_MSG (binary record operations), type 4 a zlib-compressed message; type 70 is Ferry's own
//! site traffic (fabric listener only).
//! The byte layouts are in `docs/wire-protocol.md`.

pub mod admin;
pub mod info;
pub mod msg;

use std::io::Read;

use bytes::Bytes;

/// Protocol version in every header.
pub const PROTO_VERSION: u8 = 2;
/// Message types.
pub const TYPE_INFO: u8 = 1;
pub const TYPE_ADMIN: u8 = 2;
pub const TYPE_MSG: u8 = 3;
pub const TYPE_COMPRESSED: u8 = 4;
/// Ferry's own traffic between the nodes of a site (membership, replica writes); accepted on
/// the fabric listener only. Outside Aerospike's range of types.
pub const TYPE_FABRIC: u8 = 0x46;

/// Largest body accepted from a client; a bigger declared size is refused before reading it.
pub const MAX_BODY: u64 = 64 << 20;

/// A decoded proto header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtoHeader {
    pub kind: u8,
    pub size: u64,
}

/// A frame the server cannot process; the connection is answered with a parameter error or
/// closed, never trusted further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("protocol version {0} is not 2")]
    Version(u8),
    #[error(
        "message type {0} is not info (1), admin (2), AS_MSG (3), compressed (4) or fabric (70)"
    )]
    Kind(u8),
    #[error("message of {0} bytes exceeds the {MAX_BODY}-byte limit")]
    TooLarge(u64),
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    #[error("compressed message: {0}")]
    Compression(String),
}

impl ProtoHeader {
    /// Parses and checks a header.
    pub fn parse(bytes: [u8; 8]) -> Result<Self, FrameError> {
        if bytes[0] != PROTO_VERSION {
            return Err(FrameError::Version(bytes[0]));
        }
        let kind = bytes[1];
        if !matches!(kind, TYPE_INFO | TYPE_ADMIN | TYPE_MSG | TYPE_COMPRESSED | TYPE_FABRIC) {
            return Err(FrameError::Kind(kind));
        }
        let mut size_bytes = [0u8; 8];
        size_bytes[2..].copy_from_slice(&bytes[2..]);
        let size = u64::from_be_bytes(size_bytes);
        if size > MAX_BODY {
            return Err(FrameError::TooLarge(size));
        }
        Ok(Self { kind, size })
    }

    /// Encodes a header for a body of `size` bytes.
    pub fn encode(kind: u8, size: usize) -> [u8; 8] {
        let mut bytes = (size as u64).to_be_bytes();
        bytes[0] = PROTO_VERSION;
        bytes[1] = kind;
        bytes
    }
}

/// Frames a body with its proto header.
pub fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&ProtoHeader::encode(kind, body.len()));
    out.extend_from_slice(body);
    out
}

/// Unpacks a compressed body: an 8-byte big-endian uncompressed size, then a zlib stream holding
/// a whole framed message (header and body). Returns the inner header and body.
pub fn decompress(body: &[u8]) -> Result<(ProtoHeader, Bytes), FrameError> {
    let (size, stream) = body
        .split_first_chunk::<8>()
        .ok_or(FrameError::Malformed("compressed body shorter than its size"))?;
    let size = u64::from_be_bytes(*size);
    if size > MAX_BODY + 8 {
        return Err(FrameError::TooLarge(size));
    }
    let mut inner = Vec::with_capacity(size as usize);
    // Read at most one byte past the declared size, so a zip bomb cannot grow the buffer.
    flate2::read::ZlibDecoder::new(stream)
        .take(size + 1)
        .read_to_end(&mut inner)
        .map_err(|e| FrameError::Compression(e.to_string()))?;
    if inner.len() as u64 != size {
        return Err(FrameError::Compression(format!(
            "declared {size} bytes, inflated to {}",
            inner.len()
        )));
    }
    let (header, rest) = inner
        .split_first_chunk::<8>()
        .ok_or(FrameError::Malformed("compressed message without a header"))?;
    let header = ProtoHeader::parse(*header)?;
    if header.kind == TYPE_COMPRESSED || header.size != rest.len() as u64 {
        return Err(FrameError::Malformed("compressed message's inner header is inconsistent"));
    }
    Ok((header, Bytes::copy_from_slice(rest)))
}

/// Compresses a framed message into a type-4 frame.
pub fn compress(framed: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(framed.len() / 2 + 16),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(framed);
    let stream = encoder.finish().unwrap_or_default();
    let mut body = Vec::with_capacity(8 + stream.len());
    body.extend_from_slice(&(framed.len() as u64).to_be_bytes());
    body.extend_from_slice(&stream);
    frame(TYPE_COMPRESSED, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_golden_bytes() {
        assert_eq!(ProtoHeader::encode(TYPE_MSG, 0x0102), [2, 3, 0, 0, 0, 0, 1, 2]);
        assert_eq!(
            ProtoHeader::parse([2, 1, 0, 0, 0, 0, 0, 5]),
            Ok(ProtoHeader { kind: TYPE_INFO, size: 5 })
        );
        assert_eq!(ProtoHeader::parse([3, 1, 0, 0, 0, 0, 0, 5]), Err(FrameError::Version(3)));
        assert_eq!(ProtoHeader::parse([2, 9, 0, 0, 0, 0, 0, 5]), Err(FrameError::Kind(9)));
        assert!(matches!(
            ProtoHeader::parse([2, 3, 0xff, 0, 0, 0, 0, 0]),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn compression_round_trips_and_rejects_lies() {
        let framed = frame(TYPE_MSG, &[7u8; 300]);
        let compressed = compress(&framed);
        let (header, body) = decompress(&compressed[8..]).expect("decompress");
        assert_eq!(header, ProtoHeader { kind: TYPE_MSG, size: 300 });
        assert_eq!(body.as_ref(), &[7u8; 300][..]);

        let mut lying = compressed[8..].to_vec();
        lying[7] = lying[7].wrapping_sub(1); // declared size one short
        assert!(decompress(&lying).is_err());
        assert!(decompress(&[0, 0]).is_err());
        assert!(decompress(&[0, 0, 0, 0, 0, 0, 0, 4, 1, 2, 3]).is_err());
    }
}

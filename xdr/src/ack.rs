//! The receiver's answer to a batch, and the frame types XDR uses on the transport.
//!
//! An acknowledgement is sent only after every applied record is durable; it carries what
//! happened to the batch's records so the shipper's stats match the receiver's.

use bytes::{BufMut, Bytes, BytesMut};
use ferry_transport::FrameType;

/// A [`crate::batch::Batch`], encoded.
pub const BATCH: u8 = 0x10;
/// An [`Ack`] to a batch.
pub const ACK: u8 = 0x11;
/// An idle link's heartbeat: empty payload, answered with an empty [`ACK`]-typed frame.
pub const HEARTBEAT: u8 = 0x12;
/// A [`crate::batch::Batch`] a node forwards to the node of its own site that owns the
/// records' partitions; applied there as it is, never forwarded again. Answered with an [`ACK`].
pub const FORWARD: u8 = 0x13;

/// Acknowledgement format version.
const ACK_VERSION: u8 = 1;
/// Version byte, batch id, three counts.
const ACK_LEN: usize = 1 + 8 + 4 * 3;

/// The frame type for an XDR code (all XDR codes are in the application range).
pub fn frame_type(code: u8) -> FrameType {
    FrameType::application(code).unwrap_or_else(|| unreachable!("XDR codes are >= 0x10"))
}

/// What the receiver did with a batch; sent once the applied records are durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ack {
    /// The acknowledged batch.
    pub batch: u64,
    /// Records stored: the shipped version won.
    pub applied: u32,
    /// Records kept local: the shipped version lost its conflict (or was already there).
    pub stale: u32,
    /// Records that could not be applied here (e.g. a partition this node does not own).
    pub failed: u32,
}

/// A malformed acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    #[error("acknowledgement of {0} bytes, expected {ACK_LEN}")]
    Length(usize),
    #[error("acknowledgement version {0}, this build reads {ACK_VERSION}")]
    Version(u8),
}

impl Ack {
    /// The wire form.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(ACK_LEN);
        out.put_u8(ACK_VERSION);
        out.put_u64(self.batch);
        out.put_u32(self.applied);
        out.put_u32(self.stale);
        out.put_u32(self.failed);
        out.freeze()
    }

    /// Parses the wire form.
    pub fn decode(bytes: &[u8]) -> Result<Ack, AckError> {
        let fixed: &[u8; ACK_LEN] = bytes.try_into().map_err(|_| AckError::Length(bytes.len()))?;
        if fixed[0] != ACK_VERSION {
            return Err(AckError::Version(fixed[0]));
        }
        let u32_at = |at: usize| {
            u32::from_be_bytes([fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]])
        };
        let mut id = [0u8; 8];
        id.copy_from_slice(&fixed[1..9]);
        Ok(Ack {
            batch: u64::from_be_bytes(id),
            applied: u32_at(9),
            stale: u32_at(13),
            failed: u32_at(17),
        })
    }

    /// Records the ack accounts for.
    pub fn records(&self) -> u64 {
        u64::from(self.applied) + u64::from(self.stale) + u64::from(self.failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_malformed_acks() {
        let ack = Ack { batch: 1 << 40, applied: 7, stale: 2, failed: 1 };
        let bytes = ack.encode();
        assert_eq!(Ack::decode(&bytes), Ok(ack));
        assert_eq!(ack.records(), 10);
        assert_eq!(Ack::decode(&bytes[..20]), Err(AckError::Length(20)));
        let mut wrong = bytes.to_vec();
        wrong[0] = 9;
        assert_eq!(Ack::decode(&wrong), Err(AckError::Version(9)));
    }
}

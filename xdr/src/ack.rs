//! The receiver's answer to a batch, and the frame types XDR uses on the transport.
//!
//! An acknowledgement is sent only after every applied record is durable; it carries what
//! happened to the batch's records so the shipper's stats match the receiver's.

use bytes::{BufMut, Bytes, BytesMut};
use ferry_digestlog::Digest;
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
/// A request for the receiving site's current partition map (empty payload), answered with a
/// `MAP` frame carrying a [`crate::sitemap::SiteMap`].
pub const MAP: u8 = 0x14;

/// Acknowledgement format version.
const ACK_VERSION: u8 = 3;
/// The version before the receiver's epoch was added: still read (its epoch reads as 0,
/// unknown), so a site upgraded first keeps shipping to one not upgraded yet.
const ACK_VERSION_NO_EPOCH: u8 = 2;
/// Version byte, batch id, applied and stale counts, refused count, the receiver's epoch.
const ACK_HEADER: usize = 1 + 8 + 4 * 3 + 8;
/// A refused record: digest and reason code.
const REFUSED_LEN: usize = 20 + 1;

/// The frame type for an XDR code (all XDR codes are in the application range).
pub fn frame_type(code: u8) -> FrameType {
    FrameType::application(code).unwrap_or_else(|| unreachable!("XDR codes are >= 0x10"))
}

/// Why a receiver refused one record for good: the record itself breaks a rule of the
/// destination, so sending it again cannot help until an operator acts. The shipper parks it
/// (see `docs/xdr.md`); the rest of its batch applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("set name too long")]
    SetName,
    #[error("bin name too long")]
    BinName,
    #[error("too many bins")]
    Bins,
    #[error("record too big for the destination's max-record-size")]
    TooBig,
    #[error("record is malformed")]
    Malformed,
    #[error("record's origin site may not reach this site over this link")]
    Origin,
}

impl Refusal {
    const ALL: [Refusal; 6] = [
        Refusal::SetName,
        Refusal::BinName,
        Refusal::Bins,
        Refusal::TooBig,
        Refusal::Malformed,
        Refusal::Origin,
    ];

    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            Refusal::SetName => 1,
            Refusal::BinName => 2,
            Refusal::Bins => 3,
            Refusal::TooBig => 4,
            Refusal::Malformed => 5,
            Refusal::Origin => 6,
        }
    }

    /// The refusal of a wire code.
    pub fn from_code(code: u8) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// One record a receiver refused, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub digest: Digest,
    pub refusal: Refusal,
}

/// What the receiver did with a batch; sent once the applied records are durable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ack {
    /// The acknowledged batch.
    pub batch: u64,
    /// Records stored: the shipped version won.
    pub applied: u32,
    /// Records kept local: the shipped version lost its conflict (or was already there).
    pub stale: u32,
    /// Records refused for good, each with its reason.
    pub refused: Vec<Refused>,
    /// The receiving site's membership epoch: a shipper whose map of the site is older asks
    /// for the current one.
    pub epoch: u64,
}

/// A malformed acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    #[error("acknowledgement of {0} bytes is shorter than its {ACK_HEADER}-byte header")]
    Short(usize),
    #[error("acknowledgement version {0}, this build reads {ACK_VERSION}")]
    Version(u8),
    #[error(
        "acknowledgement of {len} bytes does not hold the {refused} refused records it declares"
    )]
    Length { len: usize, refused: u32 },
    #[error("acknowledgement refuses a record with unknown reason code {0}")]
    Reason(u8),
}

impl Ack {
    /// The wire form.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(ACK_HEADER + self.refused.len() * REFUSED_LEN);
        out.put_u8(ACK_VERSION);
        out.put_u64(self.batch);
        out.put_u32(self.applied);
        out.put_u32(self.stale);
        out.put_u32(self.refused.len() as u32);
        out.put_u64(self.epoch);
        for refused in &self.refused {
            out.put_slice(refused.digest.as_bytes());
            out.put_u8(refused.refusal.code());
        }
        out.freeze()
    }

    /// Parses the wire form; the length must match the declared refusals exactly, so a
    /// peer cannot make this allocate more than it sent.
    pub fn decode(bytes: &[u8]) -> Result<Ack, AckError> {
        if bytes.first() == Some(&ACK_VERSION_NO_EPOCH) {
            // Version 2 is version 3 without the trailing epoch of the header.
            let header_end = ACK_HEADER - 8;
            let (header, rest) = bytes.split_at(header_end.min(bytes.len()));
            let mut upgraded = Vec::with_capacity(bytes.len() + 8);
            upgraded.push(ACK_VERSION);
            upgraded.extend_from_slice(header.get(1..).unwrap_or_default());
            if header.len() == header_end {
                upgraded.extend_from_slice(&0u64.to_be_bytes());
            }
            upgraded.extend_from_slice(rest);
            return Ack::decode(&upgraded);
        }
        let Some((header, rest)) = bytes.split_first_chunk::<ACK_HEADER>() else {
            return Err(AckError::Short(bytes.len()));
        };
        if header[0] != ACK_VERSION {
            return Err(AckError::Version(header[0]));
        }
        let u32_at = |at: usize| {
            u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let u64_at = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&header[at..at + 8]);
            u64::from_be_bytes(word)
        };
        let refused_count = u32_at(17);
        if rest.len() as u64 != u64::from(refused_count) * REFUSED_LEN as u64 {
            return Err(AckError::Length { len: bytes.len(), refused: refused_count });
        }
        let refused = rest
            .chunks_exact(REFUSED_LEN)
            .map(|entry| {
                let (digest, code) = entry.split_at(20);
                let refusal = Refusal::from_code(code[0]).ok_or(AckError::Reason(code[0]))?;
                let digest = Digest::try_from(digest).map_err(|_| AckError::Short(bytes.len()))?;
                Ok(Refused { digest, refusal })
            })
            .collect::<Result<_, _>>()?;
        Ok(Ack {
            batch: u64_at(1),
            applied: u32_at(9),
            stale: u32_at(13),
            refused,
            epoch: u64_at(21),
        })
    }

    /// Records the ack accounts for.
    pub fn records(&self) -> u64 {
        u64::from(self.applied) + u64::from(self.stale) + self.refused.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_malformed_acks() {
        let refused = vec![
            Refused { digest: Digest([1; 20]), refusal: Refusal::TooBig },
            Refused { digest: Digest([2; 20]), refusal: Refusal::SetName },
        ];
        let ack = Ack { batch: 1 << 40, applied: 7, stale: 2, refused, epoch: 9 };
        let bytes = ack.encode();
        assert_eq!(bytes.len(), ACK_HEADER + 2 * REFUSED_LEN);
        assert_eq!(Ack::decode(&bytes), Ok(ack.clone()));
        assert_eq!(ack.records(), 11);
        assert_eq!(Ack::decode(&bytes[..20]), Err(AckError::Short(20)));
        assert_eq!(
            Ack::decode(&bytes[..bytes.len() - 1]),
            Err(AckError::Length { len: bytes.len() - 1, refused: 2 })
        );
        let mut wrong = bytes.to_vec();
        wrong[0] = 1;
        assert_eq!(Ack::decode(&wrong), Err(AckError::Version(1)));
        // Version 2: no epoch in the header.
        let mut older = vec![2];
        older.extend_from_slice(&bytes[1..ACK_HEADER - 8]);
        older.extend_from_slice(&bytes[ACK_HEADER..]);
        assert_eq!(Ack::decode(&older), Ok(Ack { epoch: 0, ..ack.clone() }));
        assert!(Ack::decode(&older[..10]).is_err(), "a short version 2 ack is refused");
        let mut unknown = bytes.to_vec();
        *unknown.last_mut().expect("bytes") = 0;
        assert_eq!(Ack::decode(&unknown), Err(AckError::Reason(0)));
    }

    #[test]
    fn every_refusal_round_trips_its_code() {
        for refusal in Refusal::ALL {
            assert_eq!(Refusal::from_code(refusal.code()), Some(refusal));
        }
        assert_eq!(Refusal::from_code(0), None);
    }
}

//! The XDR batch: records of one namespace shipped from one site to another in one QUIC stream.
//! Pure encoding and decoding; the byte layout is drawn in `docs/xdr-batch-format.md` and locked
//! by golden-byte tests.
//!
//! A batch is validated completely before any record is applied: sizes, counts, UTF-8 names and
//! the decompressed size (capped, so a small zstd bomb cannot inflate into gigabytes). Limits
//! that depend on the destination (set and bin name lengths, `max-record-size`) are checked per
//! record by the applier, so one record that breaks them is refused alone.

use bytes::Bytes;
use ferry_digestlog::Digest;

use crate::conflict::VersionStamp;

/// Magic bytes opening every batch.
pub const MAGIC: [u8; 4] = *b"FXDR";
/// Format version written by this build.
pub const FORMAT_VERSION: u8 = 2;
/// Largest payload accepted, compressed or not, and largest inflated payload: the transport's
/// frame cap. A shipper's frames carry at most 4 MiB of records, or one record of up to the
/// largest `max-record-size` (8 MiB).
pub const MAX_PAYLOAD: usize = 16 << 20;
/// Namespace names are at most 31 bytes (Aerospike's limit).
const MAX_NAMESPACE_NAME: usize = 31;

const FLAG_ZSTD: u8 = 1;
const RECORD_TOMBSTONE: u8 = 1;
/// Smallest possible encoded record: digest, flags, generation, LUT, incarnation, void time,
/// origin, set length, key length, bin count.
const MIN_RECORD: usize = 20 + 1 + 2 + 8 + 8 + 4 + 1 + 1 + 4 + 2;

/// One record version as shipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShippedRecord {
    pub digest: Digest,
    pub stamp: VersionStamp,
    /// Expiry in seconds since the Aerospike epoch; 0 = never.
    pub void_time: u32,
    pub tombstone: bool,
    pub set: String,
    /// The user key as stored (particle type byte, then bytes), when the client sent it.
    pub key: Option<Bytes>,
    pub bins: Vec<ShippedBin>,
}

/// A bin: name, Aerospike particle type, value bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShippedBin {
    pub name: String,
    pub particle: u8,
    pub data: Bytes,
}

/// A batch of one namespace's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Sequence number of the batch on its link (acknowledgements name it).
    pub id: u64,
    /// `src-id` of the shipping site.
    pub source_site: u8,
    pub namespace: String,
    pub records: Vec<ShippedRecord>,
}

/// How to compress when encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// zstd level, 1..=22.
    pub level: i32,
    /// Payloads smaller than this many bytes ship raw.
    pub threshold: usize,
}

/// Sizes of an encoded batch, for `compression_ratio` and `bytes_shipped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodedSize {
    pub raw: usize,
    pub wire: usize,
}

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    #[error("not an XDR batch (bad magic)")]
    Magic,
    #[error("XDR batch format version {0} is not supported (this build reads version 1)")]
    Version(u8),
    #[error("XDR batch is truncated")]
    Truncated,
    #[error("XDR batch declares {0} bytes, over the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    #[error("XDR batch payload does not decompress: {0}")]
    Decompress(String),
    #[error("XDR batch is malformed: {0}")]
    Malformed(&'static str),
}

impl Batch {
    /// Encodes the batch, compressing the payload when it is at least the threshold.
    pub fn encode(&self, compression: Compression) -> (Vec<u8>, EncodedSize) {
        let mut payload = Vec::new();
        for record in &self.records {
            encode_record(record, &mut payload);
        }
        let raw = payload.len();
        let (flags, body) = if raw >= compression.threshold {
            match zstd::bulk::compress(&payload, compression.level) {
                Ok(compressed) if compressed.len() < raw => (FLAG_ZSTD, compressed),
                _ => (0, payload),
            }
        } else {
            (0, payload)
        };
        let mut out = Vec::with_capacity(body.len() + 64);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[FORMAT_VERSION, flags, self.source_site, 0]);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.push(self.namespace.len() as u8);
        out.extend_from_slice(self.namespace.as_bytes());
        out.extend_from_slice(&(self.records.len() as u32).to_be_bytes());
        out.extend_from_slice(&(raw as u32).to_be_bytes());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        let wire = out.len();
        (out, EncodedSize { raw, wire })
    }

    /// The inflated payload size `bytes` declare (capped at [`MAX_PAYLOAD`]), read without
    /// decoding: what a receiver must budget for before it decodes. 0 if the header is short.
    pub fn declared_raw_len(bytes: &[u8]) -> usize {
        let ns_len = bytes.get(16).map_or(0, |&len| usize::from(len));
        let at = 17 + ns_len + 4;
        bytes
            .get(at..at + 4)
            .and_then(|raw| raw.try_into().ok())
            .map_or(0, |raw: [u8; 4]| (u32::from_be_bytes(raw) as usize).min(MAX_PAYLOAD))
    }

    /// Decodes and validates a whole batch.
    pub fn decode(bytes: &[u8]) -> Result<Self, BatchError> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(BatchError::Magic);
        }
        let version = r.u8()?;
        if version != FORMAT_VERSION {
            return Err(BatchError::Version(version));
        }
        let flags = r.u8()?;
        let source_site = r.u8()?;
        let _reserved = r.u8()?;
        let id = r.u64()?;
        let ns_len = usize::from(r.u8()?);
        if ns_len > MAX_NAMESPACE_NAME {
            return Err(BatchError::Malformed("namespace name too long"));
        }
        let namespace = r.name(ns_len)?;
        let count = r.u32()? as usize;
        let raw_len = r.u32()? as usize;
        let body_len = r.u32()? as usize;
        if raw_len > MAX_PAYLOAD || body_len > MAX_PAYLOAD {
            return Err(BatchError::TooLarge(raw_len.max(body_len)));
        }
        let body = r.take(body_len)?;
        if !r.0.is_empty() {
            return Err(BatchError::Malformed("bytes after the payload"));
        }
        if count > raw_len / MIN_RECORD {
            return Err(BatchError::Malformed("more records than the payload can hold"));
        }
        let inflated;
        let payload = if flags & FLAG_ZSTD != 0 {
            inflated = zstd::bulk::decompress(body, raw_len)
                .map_err(|e| BatchError::Decompress(e.to_string()))?;
            if inflated.len() != raw_len {
                return Err(BatchError::Decompress("inflated size differs from declared".into()));
            }
            inflated.as_slice()
        } else {
            if body_len != raw_len {
                return Err(BatchError::Malformed("raw payload length mismatch"));
            }
            body
        };
        let mut r = Reader(payload);
        let mut records = Vec::with_capacity(count);
        for _ in 0..count {
            records.push(decode_record(&mut r)?);
        }
        if !r.0.is_empty() {
            return Err(BatchError::Malformed("bytes after the last record"));
        }
        Ok(Self { id, source_site, namespace, records })
    }
}

impl ShippedRecord {
    /// Bytes this record takes in a batch's payload (before compression).
    pub fn encoded_len(&self) -> usize {
        let bins: usize = self.bins.iter().map(|b| 1 + b.name.len() + 1 + 4 + b.data.len()).sum();
        MIN_RECORD + self.set.len() + self.key.as_ref().map_or(0, |k| k.len()) + bins
    }
}

fn encode_record(record: &ShippedRecord, out: &mut Vec<u8>) {
    out.extend_from_slice(record.digest.as_bytes());
    out.push(if record.tombstone { RECORD_TOMBSTONE } else { 0 });
    out.extend_from_slice(&record.stamp.generation.to_be_bytes());
    out.extend_from_slice(&record.stamp.last_update_ms.to_be_bytes());
    out.extend_from_slice(&record.stamp.created_ms.to_be_bytes());
    out.extend_from_slice(&record.void_time.to_be_bytes());
    out.push(record.stamp.origin_site);
    out.push(record.set.len() as u8);
    out.extend_from_slice(record.set.as_bytes());
    let key = record.key.as_deref().unwrap_or_default();
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(record.bins.len() as u16).to_be_bytes());
    for bin in &record.bins {
        out.push(bin.name.len() as u8);
        out.extend_from_slice(bin.name.as_bytes());
        out.push(bin.particle);
        out.extend_from_slice(&(bin.data.len() as u32).to_be_bytes());
        out.extend_from_slice(&bin.data);
    }
}

fn decode_record(r: &mut Reader<'_>) -> Result<ShippedRecord, BatchError> {
    let digest: [u8; 20] = r.take(20)?.try_into().map_err(|_| BatchError::Truncated)?;
    let flags = r.u8()?;
    let generation = r.u16()?;
    let last_update_ms = r.u64()?;
    let created_ms = r.u64()?;
    let void_time = r.u32()?;
    let origin_site = r.u8()?;
    let set_len = usize::from(r.u8()?);
    let set = r.name(set_len)?;
    let key_len = r.u32()? as usize;
    let key = (key_len > 0).then(|| r.take(key_len).map(Bytes::copy_from_slice)).transpose()?;
    let bin_count = r.u16()?;
    let tombstone = flags & RECORD_TOMBSTONE != 0;
    if tombstone && bin_count > 0 {
        return Err(BatchError::Malformed("a tombstone carries bins"));
    }
    if generation == 0 {
        return Err(BatchError::Malformed("generation 0"));
    }
    let mut bins = Vec::with_capacity(usize::from(bin_count).min(1024));
    for _ in 0..bin_count {
        let name_len = usize::from(r.u8()?);
        let name = r.name(name_len)?;
        let particle = r.u8()?;
        let len = r.u32()? as usize;
        bins.push(ShippedBin { name, particle, data: Bytes::copy_from_slice(r.take(len)?) });
    }
    Ok(ShippedRecord {
        digest: digest.into(),
        stamp: VersionStamp { generation, last_update_ms, origin_site, created_ms },
        void_time,
        tombstone,
        set,
        key,
        bins,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BatchError> {
        if self.0.len() < n {
            return Err(BatchError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], BatchError> {
        self.take(N)?.try_into().map_err(|_| BatchError::Truncated)
    }
    fn u8(&mut self) -> Result<u8, BatchError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, BatchError> {
        self.array().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Result<u32, BatchError> {
        self.array().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Result<u64, BatchError> {
        self.array().map(u64::from_be_bytes)
    }
    fn name(&mut self, len: usize) -> Result<String, BatchError> {
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| BatchError::Malformed("name is not UTF-8"))
    }
}

/// A record for tests of this crate: digest `[i; 20]`, generation 3, one bin unless a tombstone.
#[cfg(test)]
pub(crate) fn sample_record(i: u8, tombstone: bool) -> ShippedRecord {
    ShippedRecord {
        digest: Digest([i; 20]),
        stamp: VersionStamp {
            generation: 3,
            last_update_ms: 1_000 + u64::from(i),
            origin_site: 1,
            created_ms: 900,
        },
        void_time: 0,
        tombstone,
        set: "demo".into(),
        key: (!tombstone).then(|| Bytes::from_static(b"\x03k")),
        bins: if tombstone {
            Vec::new()
        } else {
            vec![ShippedBin {
                name: "name".into(),
                particle: 3,
                data: Bytes::from_static(b"John Doe"),
            }]
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RAW: Compression = Compression { level: 1, threshold: usize::MAX };

    #[test]
    fn the_declared_raw_length_is_read_without_decoding() {
        let batch = Batch {
            id: 9,
            source_site: 1,
            namespace: "namespace".into(),
            records: (0..5).map(|i| sample_record(i, false)).collect(),
        };
        let (bytes, size) = batch.encode(Compression { level: 3, threshold: 0 });
        assert_eq!(Batch::declared_raw_len(&bytes), size.raw);
        assert_eq!(Batch::declared_raw_len(&bytes[..20]), 0);
        let mut huge = bytes.clone();
        let at = 17 + batch.namespace.len() + 4;
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(Batch::declared_raw_len(&huge), MAX_PAYLOAD);
    }

    #[test]
    fn names_over_aerospikes_limits_still_decode_for_the_applier_to_refuse() {
        let mut record = sample_record(1, false);
        record.set = "s".repeat(64);
        record.bins[0].name = "b".repeat(16);
        let batch = Batch { id: 1, source_site: 1, namespace: "ns".into(), records: vec![record] };
        assert_eq!(Batch::decode(&batch.encode(RAW).0), Ok(batch));
    }

    #[test]
    fn golden_bytes() {
        let batch = Batch {
            id: 7,
            source_site: 1,
            namespace: "ns".into(),
            records: vec![ShippedRecord {
                digest: Digest([0xab; 20]),
                stamp: VersionStamp {
                    generation: 2,
                    last_update_ms: 0x0102,
                    origin_site: 1,
                    created_ms: 0x0101,
                },
                void_time: 0,
                tombstone: true,
                set: String::new(),
                key: None,
                bins: Vec::new(),
            }],
        };
        let (bytes, size) = batch.encode(RAW);
        let mut expected = b"FXDR".to_vec();
        expected.extend_from_slice(&[2, 0, 1, 0]); // version, flags, source site, reserved
        expected.extend_from_slice(&7u64.to_be_bytes()); // batch id
        expected.extend_from_slice(&[2, b'n', b's']); // namespace
        expected.extend_from_slice(&1u32.to_be_bytes()); // records
        expected.extend_from_slice(&51u32.to_be_bytes()); // raw payload length
        expected.extend_from_slice(&51u32.to_be_bytes()); // payload length on the wire
        expected.extend_from_slice(&[0xab; 20]); // digest
        expected.push(1); // tombstone
        expected.extend_from_slice(&[0, 2]); // generation
        expected.extend_from_slice(&0x0102u64.to_be_bytes()); // LUT
        expected.extend_from_slice(&0x0101u64.to_be_bytes()); // incarnation
        expected.extend_from_slice(&[0, 0, 0, 0, 1, 0]); // void time, origin, set length
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // key length, bin count
        assert_eq!(bytes, expected);
        assert_eq!(size, EncodedSize { raw: 51, wire: bytes.len() });
        assert_eq!(Batch::decode(&bytes), Ok(batch));
    }

    #[test]
    fn compressed_batches_round_trip_and_shrink() {
        let batch = Batch {
            id: 1,
            source_site: 2,
            namespace: "test".into(),
            records: (0..200).map(|i| sample_record(i, i % 10 == 0)).collect(),
        };
        let (bytes, size) = batch.encode(Compression { level: 3, threshold: 128 });
        assert!(size.wire * 3 < size.raw, "{size:?}");
        assert_eq!(Batch::decode(&bytes), Ok(batch));
    }

    #[test]
    fn lies_about_sizes_are_refused() {
        let batch = Batch {
            id: 1,
            source_site: 2,
            namespace: "t".into(),
            records: vec![sample_record(1, false)],
        };
        let (mut bytes, _) = batch.encode(RAW);
        bytes[4] = 9;
        assert_eq!(Batch::decode(&bytes), Err(BatchError::Version(9)));
        let (bytes, _) = batch.encode(RAW);
        let mut bomb = bytes.clone();
        // Declare a count the payload cannot hold.
        let count_at = 4 + 4 + 8 + 2;
        bomb[count_at..count_at + 4].copy_from_slice(&1_000_000u32.to_be_bytes());
        assert!(matches!(Batch::decode(&bomb), Err(BatchError::Malformed(_))));
        // Declare a huge inflated size.
        let mut huge = bytes;
        huge[count_at + 4..count_at + 8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(Batch::decode(&huge), Err(BatchError::TooLarge(_))));
    }

    #[test]
    fn a_zstd_bomb_inflates_no_further_than_declared() {
        let zeros = vec![0u8; 8 << 20];
        let compressed = zstd::bulk::compress(&zeros, 3).expect("compress");
        let mut bytes = b"FXDR".to_vec();
        bytes.extend_from_slice(&[FORMAT_VERSION, FLAG_ZSTD, 1, 0]);
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.extend_from_slice(&[1, b't']);
        bytes.extend_from_slice(&1u32.to_be_bytes());
        bytes.extend_from_slice(&1024u32.to_be_bytes()); // declares 1 KiB inflated
        bytes.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&compressed);
        assert!(matches!(Batch::decode(&bytes), Err(BatchError::Decompress(_))));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Batch::decode(&bytes);
        }

        #[test]
        fn every_truncation_is_refused(cut in 0usize..120) {
            let batch = Batch { id: 1, source_site: 2, namespace: "t".into(), records: vec![sample_record(1, false)] };
            let (bytes, _) = batch.encode(RAW);
            prop_assume!(cut < bytes.len());
            prop_assert!(Batch::decode(&bytes[..cut]).is_err());
        }
    }
}

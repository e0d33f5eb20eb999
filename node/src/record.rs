//! Records as the node stores them: bins of typed values plus the metadata XDR relies on
//! (generation, last-update time, void time, origin site, tombstone), and their byte encoding in
//! the storage engine.
//!
//! Values keep Aerospike's particle type and the client's bytes untouched, so a list or map
//! (msgpack) round-trips exactly and only the operations that need to look inside a value
//! (increment, append, prepend) interpret it.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferry_xdr::conflict::VersionStamp;

/// Seconds from the Unix epoch to Aerospike's epoch (2010-01-01T00:00:00Z), in which void times
/// are counted on the wire.
pub const CITRUSLEAF_EPOCH_SECS: u64 = 1_262_304_000;

/// Aerospike particle types the node knows by number.
pub mod particle {
    pub const NULL: u8 = 0;
    pub const INTEGER: u8 = 1;
    pub const FLOAT: u8 = 2;
    pub const STRING: u8 = 3;
    pub const BLOB: u8 = 4;
    /// Language-specific serialized blobs (Java 7, C# 8, Python 9, Ruby 10, PHP 11, Erlang
    /// 12): opaque to the server, stored and answered as sent.
    pub const LANGUAGE_BLOBS: std::ops::RangeInclusive<u8> = 7..=12;
    pub const BOOL: u8 = 17;
    pub const HLL: u8 = 18;
    pub const MAP: u8 = 19;
    pub const LIST: u8 = 20;
    pub const GEOJSON: u8 = 23;

    /// Whether a particle type may be stored in a bin.
    pub fn storable(particle: u8) -> bool {
        matches!(particle, INTEGER | FLOAT | STRING | BLOB | BOOL | HLL | MAP | LIST | GEOJSON)
            || LANGUAGE_BLOBS.contains(&particle)
    }
}

/// A bin value: particle type and its wire bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub particle: u8,
    pub data: Bytes,
}

impl Value {
    /// An integer value (8 bytes big-endian on the wire).
    pub fn integer(value: i64) -> Self {
        Self { particle: particle::INTEGER, data: Bytes::copy_from_slice(&value.to_be_bytes()) }
    }

    /// A float value (IEEE 754, 8 bytes big-endian on the wire).
    pub fn float(value: f64) -> Self {
        Self { particle: particle::FLOAT, data: Bytes::copy_from_slice(&value.to_be_bytes()) }
    }

    /// The integer, if this is one and well formed.
    pub fn as_integer(&self) -> Option<i64> {
        (self.particle == particle::INTEGER)
            .then(|| <[u8; 8]>::try_from(self.data.as_ref()).ok().map(i64::from_be_bytes))
            .flatten()
    }

    /// The float, if this is one and well formed.
    pub fn as_float(&self) -> Option<f64> {
        (self.particle == particle::FLOAT)
            .then(|| <[u8; 8]>::try_from(self.data.as_ref()).ok().map(f64::from_be_bytes))
            .flatten()
    }
}

/// A named bin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bin {
    pub name: String,
    pub value: Value,
}

/// Bin names are at most 15 bytes (Aerospike's limit).
pub const MAX_BIN_NAME: usize = 15;
/// Set names are at most 63 bytes (Aerospike's limit).
pub const MAX_SET_NAME: usize = 63;
/// Most bins one record holds (the stored form counts them in a `u16`).
pub const MAX_BINS: usize = u16::MAX as usize;

/// Why a record breaks one of Aerospike's limits; checked before a version is logged or
/// stored, whether a client wrote it or another site shipped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("set name of {0} bytes (at most {MAX_SET_NAME})")]
    SetName(usize),
    #[error("bin name of {0} bytes (at most {MAX_BIN_NAME})")]
    BinName(usize),
    #[error("{0} bins (at most {MAX_BINS})")]
    Bins(usize),
    #[error("record of {size} bytes is over the namespace's max-record-size {max}")]
    TooBig { size: usize, max: u32 },
}

/// Checks `record` against Aerospike's name limits and the namespace's `max_record_size`
/// (measured as the stored size, see [`encoded_len`]).
pub fn check_limits(record: &Record, max_record_size: u32) -> Result<(), LimitError> {
    if record.set.len() > MAX_SET_NAME {
        return Err(LimitError::SetName(record.set.len()));
    }
    if let Some(bin) = record.bins.iter().find(|b| b.name.len() > MAX_BIN_NAME) {
        return Err(LimitError::BinName(bin.name.len()));
    }
    if record.bins.len() > MAX_BINS {
        return Err(LimitError::Bins(record.bins.len()));
    }
    let size = encoded_len(record);
    if size > max_record_size as usize {
        return Err(LimitError::TooBig { size, max: max_record_size });
    }
    Ok(())
}

/// One version of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// 1..=65535, wrapping to 1; never 0 for a live record.
    pub generation: u16,
    /// Last update, milliseconds since the Unix epoch; strictly increases per record.
    pub last_update_ms: u64,
    /// When this incarnation began: the LUT of the write that created the record while no
    /// version was stored. Versions and tombstones after it keep it; the `generation`
    /// conflict policy orders incarnations before generations (`ferry_xdr::conflict`).
    pub created_ms: u64,
    /// Expiry in seconds since the Aerospike epoch; 0 means never.
    pub void_time: u32,
    /// Site id of the write that produced this version.
    pub origin_site: u8,
    /// A durable delete: invisible to clients, kept so the delete wins conflicts and ships.
    pub tombstone: bool,
    pub set: String,
    /// The user key as sent by the client (particle type byte, then bytes), if it sent one.
    pub key: Option<Bytes>,
    pub bins: Vec<Bin>,
    /// The digest-log position of this version's entry, if it was logged. After a crash the
    /// node relogs versions positioned past the log's end; reclaim keeps a tombstone until
    /// every link out of the site has shipped past it (`tombstone-ttl` is only a floor).
    pub logged_lsn: Option<u64>,
}

impl Record {
    /// The metadata conflict resolution compares.
    pub fn stamp(&self) -> VersionStamp {
        VersionStamp {
            generation: self.generation,
            last_update_ms: self.last_update_ms,
            origin_site: self.origin_site,
            created_ms: self.created_ms,
        }
    }

    /// Whether the record has expired at `now_secs` (Aerospike epoch).
    pub fn expired(&self, now_secs: u32) -> bool {
        self.void_time != 0 && self.void_time <= now_secs
    }

    /// Whether a client can see the record.
    pub fn visible(&self, now_secs: u32) -> bool {
        !self.tombstone && !self.expired(now_secs)
    }

    /// The bin with this name.
    /// The tombstone that replaces this version when site `site_id` deletes (or expires) it at
    /// `now_ms`: the next generation and a later LUT, so it wins against this version anywhere.
    pub fn tombstone_after(&self, site_id: u8, now_ms: u64) -> Record {
        Record {
            generation: next_generation(Some(self.generation)),
            last_update_ms: next_last_update(Some(self.last_update_ms), now_ms),
            created_ms: self.created_ms,
            void_time: 0,
            origin_site: site_id,
            tombstone: true,
            set: self.set.clone(),
            key: self.key.clone(),
            bins: Vec::new(),
            logged_lsn: None,
        }
    }

    /// The tombstone an expiration leaves when it must ship (`ship-nsup-deletes`): stamped at
    /// the moment the record expired, not when reclaim noticed, so a write made at another
    /// site after the expiry is the later version everywhere.
    pub fn expiration_tombstone(&self, site_id: u8) -> Record {
        let expired_ms = (CITRUSLEAF_EPOCH_SECS + u64::from(self.void_time)) * 1000;
        self.tombstone_after(site_id, expired_ms)
    }

    pub fn bin(&self, name: &str) -> Option<&Bin> {
        self.bins.iter().find(|b| b.name == name)
    }

    /// Sets a bin, replacing one of the same name; a null value removes the bin.
    pub fn set_bin(&mut self, name: &str, value: Value) {
        let existing = self.bins.iter().position(|b| b.name == name);
        match (existing, value.particle == particle::NULL) {
            (Some(i), true) => {
                self.bins.remove(i);
            }
            (Some(i), false) => self.bins[i].value = value,
            (None, true) => {}
            (None, false) => self.bins.push(Bin { name: name.to_owned(), value }),
        }
    }
}

/// The generation after `previous` (none for a new record): wraps below 65536, skips 0.
pub fn next_generation(previous: Option<u16>) -> u16 {
    match previous {
        None | Some(u16::MAX) => 1,
        Some(g) => g + 1,
    }
}

/// The last-update time of a new version: now, but always after the previous one.
pub fn next_last_update(previous: Option<u64>, now_ms: u64) -> u64 {
    previous.map_or(now_ms, |prev| now_ms.max(prev + 1))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Seconds since the Aerospike epoch.
pub fn now_citrusleaf_secs() -> u32 {
    (now_ms() / 1000).saturating_sub(CITRUSLEAF_EPOCH_SECS) as u32
}

/// Why stored bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored record is corrupt: {0}")]
pub struct CorruptRecord(pub &'static str);

const FORMAT: u8 = 2;
/// The format before incarnations: no `created_ms` (read as 0).
const FORMAT_V1: u8 = 1;
const FLAG_TOMBSTONE: u8 = 1;
/// A `u64` log position follows the bins.
const FLAG_LOGGED: u8 = 2;

/// Encodes a record for the storage engine.
///
/// Layout (big-endian): format u8, flags u8, generation u16, last-update u64, created u64,
/// void-time u32, origin u8, set (u8 length + bytes), key (u32 length + bytes, 0 = none), bin count u16, then
/// per bin: name (u8 length + bytes), particle u8, value (u32 length + bytes).
pub fn encode(record: &Record) -> Vec<u8> {
    let key_len = record.key.as_ref().map_or(0, |k| k.len());
    let mut out = Vec::with_capacity(encoded_len(record));
    out.push(FORMAT);
    let logged = if record.logged_lsn.is_some() { FLAG_LOGGED } else { 0 };
    out.push(if record.tombstone { FLAG_TOMBSTONE } else { 0 } | logged);
    out.extend_from_slice(&record.generation.to_be_bytes());
    out.extend_from_slice(&record.last_update_ms.to_be_bytes());
    out.extend_from_slice(&record.created_ms.to_be_bytes());
    out.extend_from_slice(&record.void_time.to_be_bytes());
    out.push(record.origin_site);
    out.push(record.set.len() as u8);
    out.extend_from_slice(record.set.as_bytes());
    out.extend_from_slice(&(key_len as u32).to_be_bytes());
    if let Some(key) = &record.key {
        out.extend_from_slice(key);
    }
    out.extend_from_slice(&(record.bins.len() as u16).to_be_bytes());
    for bin in &record.bins {
        out.push(bin.name.len() as u8);
        out.extend_from_slice(bin.name.as_bytes());
        out.push(bin.value.particle);
        out.extend_from_slice(&(bin.value.data.len() as u32).to_be_bytes());
        out.extend_from_slice(&bin.value.data);
    }
    if let Some(lsn) = record.logged_lsn {
        out.extend_from_slice(&lsn.to_be_bytes());
    }
    out
}

/// The length of [`encode`]'s output, without encoding.
pub fn encoded_len(record: &Record) -> usize {
    let bins: usize =
        record.bins.iter().map(|b| 1 + b.name.len() + 1 + 4 + b.value.data.len()).sum();
    let logged = if record.logged_lsn.is_some() { 8 } else { 0 };
    32 + record.set.len() + record.key.as_ref().map_or(0, |k| k.len()) + bins + logged
}

/// Decodes what [`encode`] wrote; never panics on damaged bytes.
pub fn decode(bytes: &[u8]) -> Result<Record, CorruptRecord> {
    let mut r = Reader(bytes);
    let format = r.u8()?;
    if format != FORMAT && format != FORMAT_V1 {
        return Err(CorruptRecord("unknown format version"));
    }
    let flags = r.u8()?;
    let generation = r.u16()?;
    let last_update_ms = r.u64()?;
    let created_ms = if format == FORMAT { r.u64()? } else { 0 };
    let void_time = r.u32()?;
    let origin_site = r.u8()?;
    let set_len = usize::from(r.u8()?);
    let set = r.string(set_len)?;
    let key_len = r.u32()? as usize;
    let key = (key_len > 0).then(|| r.take(key_len).map(Bytes::copy_from_slice)).transpose()?;
    let count = r.u16()?;
    let mut bins = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let name_len = usize::from(r.u8()?);
        let name = r.string(name_len)?;
        let particle = r.u8()?;
        let len = r.u32()? as usize;
        let data = Bytes::copy_from_slice(r.take(len)?);
        bins.push(Bin { name, value: Value { particle, data } });
    }
    let logged_lsn = if flags & FLAG_LOGGED != 0 { Some(r.u64()?) } else { None };
    if !r.0.is_empty() {
        return Err(CorruptRecord("trailing bytes"));
    }
    Ok(Record {
        generation,
        last_update_ms,
        created_ms,
        void_time,
        origin_site,
        tombstone: flags & FLAG_TOMBSTONE != 0,
        set,
        key,
        bins,
        logged_lsn,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CorruptRecord> {
        if self.0.len() < n {
            return Err(CorruptRecord("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CorruptRecord> {
        self.take(N)?.try_into().map_err(|_| CorruptRecord("truncated"))
    }
    fn u8(&mut self) -> Result<u8, CorruptRecord> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, CorruptRecord> {
        self.array().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Result<u32, CorruptRecord> {
        self.array().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Result<u64, CorruptRecord> {
        self.array().map(u64::from_be_bytes)
    }
    fn string(&mut self, n: usize) -> Result<String, CorruptRecord> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| CorruptRecord("name is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Record {
        Record {
            generation: 7,
            last_update_ms: 1_700_000_000_123,
            created_ms: 1_700_000_000_001,
            void_time: 500,
            origin_site: 2,
            tombstone: false,
            set: "demo".into(),
            key: Some(Bytes::from_static(b"\x03user1")),
            bins: vec![
                Bin { name: "name".into(), value: Value { particle: 3, data: "John".into() } },
                Bin { name: "age".into(), value: Value::integer(42) },
            ],
            logged_lsn: None,
        }
    }

    #[test]
    fn encoding_round_trips() {
        let record = sample();
        assert_eq!(decode(&encode(&record)), Ok(record));
        let logged = Record { tombstone: true, bins: Vec::new(), logged_lsn: Some(77), ..sample() };
        assert_eq!(encoded_len(&logged), encode(&logged).len());
        assert_eq!(decode(&encode(&logged)), Ok(logged));
    }

    #[test]
    fn records_stored_before_incarnations_read_as_incarnation_zero() {
        let record = sample();
        let mut v1 = encode(&record);
        v1.drain(12..20);
        v1[0] = FORMAT_V1;
        assert_eq!(decode(&v1), Ok(Record { created_ms: 0, ..record }));
    }

    #[test]
    fn limits_name_the_first_rule_broken_and_measure_the_stored_size() {
        let record = sample();
        assert_eq!(encoded_len(&record), encode(&record).len());
        let size = encoded_len(&record);
        assert_eq!(check_limits(&record, size as u32), Ok(()), "exactly at the limit");
        assert_eq!(
            check_limits(&record, size as u32 - 1),
            Err(LimitError::TooBig { size, max: size as u32 - 1 })
        );
        let long_set = Record { set: "s".repeat(64), ..sample() };
        assert_eq!(check_limits(&long_set, u32::MAX), Err(LimitError::SetName(64)));
        let mut long_bin = sample();
        long_bin.bins[1].name = "b".repeat(16);
        assert_eq!(check_limits(&long_bin, u32::MAX), Err(LimitError::BinName(16)));
    }

    #[test]
    fn an_expiration_tombstone_is_stamped_at_the_expiry() {
        let expires = Record { void_time: 500_000_000, last_update_ms: 1_000, ..sample() };
        let tombstone = expires.expiration_tombstone(1);
        let expired_ms = (CITRUSLEAF_EPOCH_SECS + 500_000_000) * 1000;
        assert_eq!((tombstone.last_update_ms, tombstone.generation), (expired_ms, 8));
        assert!(tombstone.tombstone && tombstone.bins.is_empty());
        // Never before the version it replaces.
        let late = Record { last_update_ms: expired_ms + 5, ..expires };
        assert_eq!(late.expiration_tombstone(1).last_update_ms, expired_ms + 6);
    }

    #[test]
    fn generation_wraps_and_skips_zero() {
        assert_eq!(next_generation(None), 1);
        assert_eq!(next_generation(Some(1)), 2);
        assert_eq!(next_generation(Some(u16::MAX)), 1);
    }

    #[test]
    fn last_update_is_monotonic_per_record() {
        assert_eq!(next_last_update(None, 100), 100);
        assert_eq!(next_last_update(Some(50), 100), 100);
        assert_eq!(next_last_update(Some(100), 100), 101);
        assert_eq!(next_last_update(Some(200), 100), 201);
    }

    #[test]
    fn null_removes_a_bin() {
        let mut record = sample();
        record.set_bin("age", Value { particle: particle::NULL, data: Bytes::new() });
        assert!(record.bin("age").is_none());
        record.set_bin("age", Value::integer(1));
        assert_eq!(record.bin("age").and_then(|b| b.value.as_integer()), Some(1));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn every_truncation_is_an_error(cut in 0usize..60) {
            let bytes = encode(&sample());
            prop_assume!(cut < bytes.len());
            prop_assert!(decode(&bytes[..cut]).is_err());
        }
    }
}

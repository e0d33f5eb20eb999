//! Segment files: the 32-byte header, file naming by first LSN, and a pure scanner that walks
//! the records of a segment image and says where (and why) the valid prefix ends.

use crate::entry::{self, LoggedEntry, Lsn, RECORD_LEN, RecordError};

/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"FERRYDLS";
/// Current segment format version.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes of the segment header.
pub const HEADER_LEN: usize = 32;
/// `prev_min_lut` value meaning "the previous segment held no entries" (or there was none).
pub(crate) const NO_LUT: u64 = u64::MAX;

const SUFFIX: &str = ".seg";

/// The fixed header at the start of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// LSN of the first entry this segment holds (or will hold).
    pub(crate) first_lsn: Lsn,
    /// Smallest LUT among the entries of the previous segment, `NO_LUT` if none; lets the
    /// overflow watermark be computed without reading the previous segment.
    pub(crate) prev_min_lut: u64,
}

/// Why a segment header could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Fewer than `HEADER_LEN` bytes.
    #[error("segment header truncated: {0} of {HEADER_LEN} bytes present")]
    Truncated(usize),
    /// Wrong magic.
    #[error("segment magic mismatch")]
    BadMagic,
    /// A format version this build cannot read.
    #[error("unsupported segment format version {0}")]
    BadVersion(u16),
    /// Header length field is not `HEADER_LEN`.
    #[error("segment header length {0} is not {HEADER_LEN}")]
    BadHeaderLen(u16),
    /// Header CRC32C mismatch.
    #[error("segment header CRC32C mismatch")]
    BadCrc,
    /// First LSN outside `1..=Lsn::MAX`.
    #[error("segment first LSN {0} is out of range")]
    BadFirstLsn(u64),
}

impl SegmentHeader {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        b[12..20].copy_from_slice(&self.first_lsn.0.to_le_bytes());
        b[20..28].copy_from_slice(&self.prev_min_lut.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
        let Some(b) = bytes.get(..HEADER_LEN) else {
            return Err(HeaderError::Truncated(bytes.len()));
        };
        if b[0..8] != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = entry::u16_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::BadVersion(version));
        }
        let header_len = entry::u16_at(b, 10);
        if header_len as usize != HEADER_LEN {
            return Err(HeaderError::BadHeaderLen(header_len));
        }
        if entry::u32_at(b, 28) != crc32c::crc32c(&b[0..28]) {
            return Err(HeaderError::BadCrc);
        }
        let first_lsn = entry::u64_at(b, 12);
        if !(1..=Lsn::MAX.0).contains(&first_lsn) {
            return Err(HeaderError::BadFirstLsn(first_lsn));
        }
        Ok(SegmentHeader { first_lsn: Lsn(first_lsn), prev_min_lut: entry::u64_at(b, 20) })
    }
}

/// File name of the segment whose first entry is `first_lsn` (sorts by LSN).
pub(crate) fn segment_name(first_lsn: Lsn) -> String {
    format!("{:020}{SUFFIX}", first_lsn.0)
}

/// The first LSN encoded in a segment file name, `None` if `name` is not a segment file
/// (or names an LSN outside `1..=Lsn::MAX`).
pub(crate) fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let lsn = Lsn(digits.parse().ok()?);
    (Lsn(1)..=Lsn::MAX).contains(&lsn).then_some(lsn)
}

/// Byte offset of the record holding `lsn` in a segment starting at `first_lsn`
/// (version-1 records have a fixed size).
pub(crate) fn record_offset(first_lsn: Lsn, lsn: Lsn) -> u64 {
    HEADER_LEN as u64 + (lsn.0 - first_lsn.0) * RECORD_LEN as u64
}

/// Why a scan stopped before the end of the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScanStop {
    /// The record could not be decoded.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A record decoded but carries the wrong LSN.
    #[error("record carries LSN {found}, expected {expected}")]
    LsnMismatch {
        /// The LSN the position calls for.
        expected: Lsn,
        /// The LSN stored.
        found: Lsn,
    },
}

/// Result of scanning the records of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Byte length of the valid prefix (header included).
    pub(crate) valid_len: u64,
    /// LSN the next record would carry.
    pub(crate) next_lsn: Lsn,
    /// Smallest LUT among the valid records, `NO_LUT` if none.
    pub(crate) min_lut: u64,
    /// Why the scan stopped short of the end of the bytes, if it did.
    pub(crate) stop: Option<ScanStop>,
}

/// Walks the records of a whole segment image (`bytes` starts with the header already
/// decoded as `header`), calling `visit` for each valid record in order.
pub(crate) fn scan(
    header: &SegmentHeader,
    bytes: &[u8],
    mut visit: impl FnMut(&LoggedEntry),
) -> Scan {
    let mut offset = HEADER_LEN;
    let mut next_lsn = header.first_lsn;
    let mut min_lut = NO_LUT;
    let mut stop = None;
    while offset < bytes.len() {
        match entry::decode_record(&bytes[offset..]) {
            Ok(logged) if logged.lsn == next_lsn => {
                visit(&logged);
                min_lut = min_lut.min(logged.entry.lut_ms);
                next_lsn = next_lsn.next();
                offset += RECORD_LEN;
            }
            Ok(logged) => {
                stop = Some(ScanStop::LsnMismatch { expected: next_lsn, found: logged.lsn });
                break;
            }
            Err(e) => {
                stop = Some(ScanStop::Record(e));
                break;
            }
        }
    }
    Scan { valid_len: offset as u64, next_lsn, min_lut, stop }
}

/// A segment file image decoded as far as it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedSegment {
    /// First LSN from the header.
    pub first_lsn: Lsn,
    /// The valid records, in order.
    pub entries: Vec<LoggedEntry>,
    /// Bytes of the valid prefix, header included.
    pub valid_len: u64,
    /// Why decoding stopped before the end of the image, if it did.
    pub stop: Option<ScanStop>,
}

/// Decodes a whole segment file image: the header, then records up to the first invalid
/// one. Total on any input (never panics); for tools and the fuzz target.
pub fn decode_segment(bytes: &[u8]) -> Result<DecodedSegment, HeaderError> {
    let header = SegmentHeader::decode(bytes)?;
    let mut entries = Vec::new();
    let scan = scan(&header, bytes, |e| entries.push(*e));
    Ok(DecodedSegment {
        first_lsn: header.first_lsn,
        entries,
        valid_len: scan.valid_len,
        stop: scan.stop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{encode_record, tests::sample};

    /// Locks the version-1 header bytes drawn in docs/digestlog-format.md.
    #[test]
    fn golden_header_bytes() {
        let h = SegmentHeader { first_lsn: Lsn(0x0102), prev_min_lut: NO_LUT };
        let bytes = h.encode();
        let expected: Vec<u8> = [
            &b"FERRYDLS"[..],
            &[1, 0],                         // version
            &[32, 0],                        // header length
            &[0x02, 0x01, 0, 0, 0, 0, 0, 0], // first lsn
            &[0xff; 8],                      // prev_min_lut: none
            &[0x87, 0xe4, 0x8a, 0xfc],       // crc32c of bytes 0..28
        ]
        .concat();
        assert_eq!(bytes[..], expected[..]);
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(SegmentHeader::decode(&bytes), Ok(h));
    }

    #[test]
    fn header_rejects() {
        let good = SegmentHeader { first_lsn: Lsn(5), prev_min_lut: 3 }.encode();
        assert_eq!(SegmentHeader::decode(&good[..31]), Err(HeaderError::Truncated(31)));
        let mut b = good;
        b[0] = b'X';
        assert_eq!(SegmentHeader::decode(&b), Err(HeaderError::BadMagic));
        let mut b = good;
        b[8] = 2;
        assert_eq!(SegmentHeader::decode(&b), Err(HeaderError::BadVersion(2)));
        let mut b = good;
        b[10] = 31;
        assert_eq!(SegmentHeader::decode(&b), Err(HeaderError::BadHeaderLen(31)));
        let mut b = good;
        b[15] ^= 1;
        assert_eq!(SegmentHeader::decode(&b), Err(HeaderError::BadCrc));
        for bad in [0, u64::MAX] {
            let b = SegmentHeader { first_lsn: Lsn(bad), prev_min_lut: 0 }.encode();
            assert_eq!(SegmentHeader::decode(&b), Err(HeaderError::BadFirstLsn(bad)));
        }
    }

    #[test]
    fn names_sort_by_lsn() {
        assert_eq!(segment_name(Lsn(42)), "00000000000000000042.seg");
        assert_eq!(parse_segment_name("00000000000000000042.seg"), Some(Lsn(42)));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("00000000000000000000.seg"), None);
        assert_eq!(parse_segment_name("18446744073709551615.seg"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_name("00000000000000000042.seg.tmp"), None);
        assert!(segment_name(Lsn(9)) < segment_name(Lsn(10)));
    }

    #[test]
    fn scan_stops_at_torn_and_wrong_lsn() {
        let header = SegmentHeader { first_lsn: Lsn(10), prev_min_lut: NO_LUT };
        let mut img = header.encode().to_vec();
        for i in 0..3 {
            encode_record(Lsn(10 + i), &sample(i), &mut img);
        }
        let full = scan(&header, &img, |_| {});
        assert_eq!(full.next_lsn, Lsn(13));
        assert_eq!(full.valid_len, img.len() as u64);
        assert_eq!(full.min_lut, sample(0).lut_ms);
        assert_eq!(full.stop, None);

        let torn = scan(&header, &img[..img.len() - 1], |_| {});
        assert_eq!(torn.next_lsn, Lsn(12));
        assert!(matches!(torn.stop, Some(ScanStop::Record(RecordError::Truncated { .. }))));

        encode_record(Lsn(99), &sample(3), &mut img);
        let gap = scan(&header, &img, |_| {});
        assert_eq!(gap.stop, Some(ScanStop::LsnMismatch { expected: Lsn(13), found: Lsn(99) }));
        assert_eq!(gap.valid_len, full.valid_len);
    }

    fn image(n: u64) -> Vec<u8> {
        let header = SegmentHeader { first_lsn: Lsn(7), prev_min_lut: NO_LUT };
        let mut img = header.encode().to_vec();
        for i in 0..n {
            encode_record(Lsn(7 + i), &sample(i), &mut img);
        }
        img
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn decode_is_total(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = decode_segment(&bytes);
        }

        /// Damage anywhere in a valid image yields a prefix of its entries, never an invented
        /// or altered one, and stops exactly at the first damaged record.
        #[test]
        fn damage_yields_a_prefix(
            n in 0u64..12,
            flips in proptest::collection::vec((proptest::num::usize::ANY, 1u8..=255), 0..4),
            cut in proptest::num::usize::ANY,
        ) {
            let good = image(n);
            let mut img = good.clone();
            for (at, mask) in &flips {
                let i = at % img.len();
                img[i] ^= mask;
            }
            img.truncate(cut % (img.len() + 1));
            let Ok(d) = decode_segment(&img) else {
                return Ok(());
            };
            let original = decode_segment(&good).expect("valid image");
            proptest::prop_assert!(d.entries.len() <= original.entries.len());
            proptest::prop_assert_eq!(&d.entries[..], &original.entries[..d.entries.len()]);
            proptest::prop_assert_eq!(d.valid_len, (HEADER_LEN + d.entries.len() * RECORD_LEN) as u64);
        }
    }
}

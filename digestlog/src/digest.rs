//! The record digest: RIPEMD-160 over the set name, the key's particle type and the key bytes,
//! the 20 bytes every Aerospike client computes and every part of Ferry keys records by. It
//! lives here because it is the unit the digest log records; storage, placement, shipping and
//! the wire formats all take it from here.

use std::fmt;
use std::ops::Deref;

/// A record digest (20 bytes). Shows as 40 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub [u8; 20]);

impl Digest {
    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }
}

impl Deref for Digest {
    type Target = [u8; 20];

    fn deref(&self) -> &[u8; 20] {
        &self.0
    }
}

impl From<[u8; 20]> for Digest {
    fn from(bytes: [u8; 20]) -> Digest {
        Digest(bytes)
    }
}

/// The slice is not 20 bytes long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a digest is 20 bytes, not {0}")]
pub struct DigestLength(pub usize);

impl TryFrom<&[u8]> for Digest {
    type Error = DigestLength;

    fn try_from(bytes: &[u8]) -> Result<Digest, DigestLength> {
        bytes.try_into().map(Digest).map_err(|_| DigestLength(bytes.len()))
    }
}

impl AsRef<[u8]> for Digest {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_as_hex_and_reads_back_from_bytes() {
        let mut bytes = [0u8; 20];
        bytes[0] = 0xab;
        bytes[19] = 0x01;
        let digest = Digest(bytes);
        assert_eq!(digest.to_string(), format!("ab{}01", "0".repeat(36)));
        assert_eq!(Digest::try_from(&bytes[..]), Ok(digest));
        assert_eq!(Digest::try_from(&bytes[..19]), Err(DigestLength(19)));
        assert_eq!(digest[0], 0xab, "derefs to the bytes");
    }
}

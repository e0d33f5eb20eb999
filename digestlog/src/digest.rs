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

/// The text is not 40 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a digest is 40 hex digits, not '{0}'")]
pub struct DigestHex(pub String);

impl std::str::FromStr for Digest {
    type Err = DigestHex;

    fn from_str(text: &str) -> Result<Digest, DigestHex> {
        let bad = || DigestHex(text.to_owned());
        if text.len() != 40 || !text.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; 20];
        for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Digest(bytes))
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

    #[test]
    fn reads_back_from_hex_and_refuses_anything_else() {
        let digest = Digest([0x5a; 20]);
        assert_eq!(digest.to_string().parse::<Digest>(), Ok(digest));
        assert_eq!("AB".repeat(20).parse::<Digest>(), Ok(Digest([0xab; 20])));
        for bad in ["", "ab", &"g0".repeat(20), &"ab".repeat(21), &"é".repeat(20)] {
            assert_eq!(bad.parse::<Digest>(), Err(DigestHex(bad.to_owned())), "{bad}");
        }
    }
}

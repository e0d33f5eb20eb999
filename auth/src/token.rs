//! Roles and bearer tokens: `fy1.<name>.<secret>`, the secret 32 random bytes in base64url.
//! The name travels in the clear so a server finds the entry to compare with, and so logs and
//! the audit trail say who called; only the secret's SHA-256 is stored.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// What a caller may do; each role may do everything the ones before it may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Read status, stats, metrics, topology versions, verification summaries.
    ReadOnly,
    /// Also control links (pause, resume, drain, rewind) and run drills.
    Operator,
    /// Also change the topology.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::ReadOnly, Role::Operator, Role::Admin];

    /// The role's name in files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = TokenError;

    fn from_str(text: &str) -> Result<Role, TokenError> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| TokenError::UnknownRole(text.to_owned()))
    }
}

/// Why a token or role could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("not a Ferry token (expected fy1.<name>.<secret>)")]
    Malformed,
    #[error("token name '{0}': use letters, digits, '-' and '_' (1 to 64 of them)")]
    BadName(String),
    #[error("unknown role '{0}': read-only, operator or admin")]
    UnknownRole(String),
}

const PREFIX: &str = "fy1";
const SECRET_BYTES: usize = 32;

/// A bearer token: what its holder presents. Its `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    name: String,
    secret: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Token {
    /// A new token named `name`, with a fresh random secret.
    pub fn issue(name: &str) -> Result<Token, TokenError> {
        check_name(name)?;
        let bytes: [u8; SECRET_BYTES] = rand::random();
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        Ok(Token { name: name.to_owned(), secret })
    }

    /// Reads a token as presented (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Token, TokenError> {
        let mut parts = text.trim().split('.');
        let (Some(PREFIX), Some(name), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        check_name(name).map_err(|_| TokenError::Malformed)?;
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(secret);
        if decoded.map_or(true, |bytes| bytes.len() != SECRET_BYTES) {
            return Err(TokenError::Malformed);
        }
        Ok(Token { name: name.to_owned(), secret: secret.to_owned() })
    }

    /// The holder's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The token as presented: `fy1.<name>.<secret>`.
    pub fn expose(&self) -> String {
        format!("{PREFIX}.{}.{}", self.name, self.secret)
    }

    /// The SHA-256 of the secret, hex: what an access file stores.
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.secret.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Whether `name` may name a token.
pub fn check_name(name: &str) -> Result<(), TokenError> {
    let fits = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if fits { Ok(()) } else { Err(TokenError::BadName(name.to_owned())) }
}

/// Equality of two hashes in time independent of where they differ.
pub(crate) fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_token_reads_back_and_hashes_the_same() {
        let token = Token::issue("ops-1").expect("issue");
        let text = token.expose();
        assert!(text.starts_with("fy1.ops-1."), "{text}");
        let read = Token::parse(&format!("  {text}\n")).expect("parse");
        assert_eq!(read, token);
        assert_eq!(read.hash(), token.hash());
        assert_eq!(token.hash().len(), 64);
        assert_ne!(Token::issue("ops-1").expect("issue").hash(), token.hash());
    }

    #[test]
    fn tokens_that_are_not_ferrys_are_refused() {
        let good = Token::issue("a").expect("issue").expose();
        let secret = good.rsplit('.').next().expect("secret");
        for bad in [
            "",
            "Bearer",
            "fy1.a",
            &format!("fy2.a.{secret}"),
            &format!("fy1.a b.{secret}"),
            &format!("fy1.a.{secret}.x"),
            "fy1.a.c2hvcnQ",
            &format!("fy1..{secret}"),
        ] {
            assert_eq!(Token::parse(bad), Err(TokenError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn names_and_roles_are_checked() {
        assert_eq!(Token::issue("a.b"), Err(TokenError::BadName("a.b".into())));
        assert!(Token::issue(&"x".repeat(65)).is_err());
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        assert_eq!("root".parse::<Role>(), Err(TokenError::UnknownRole("root".into())));
        assert!(Role::ReadOnly < Role::Operator && Role::Operator < Role::Admin);
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let token = Token::issue("a").expect("issue");
        let secret = token.expose().rsplit('.').next().expect("secret").to_owned();
        assert!(!format!("{token:?}").contains(&secret));
    }

    #[test]
    fn hash_comparison_needs_every_byte() {
        assert!(hashes_equal("abcd", "abcd"));
        assert!(!hashes_equal("abcd", "abce"));
        assert!(!hashes_equal("abcd", "abc"));
    }
}

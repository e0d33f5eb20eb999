//! Passwords as Aerospike clients send them and as a site keeps them. A client never sends the
//! password itself: it sends bcrypt of it under a salt fixed for every client (so the hash is
//! the same each time), which makes that hash as good as the password. The site keeps a bcrypt
//! of the client's hash under a random salt, so the stored value cannot be replayed as a login
//! and two users with one password do not look alike.

/// A password, a client's hash of one, or a stored hash: shown as `***` in logs and debug
/// output, so none can leak through them.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: String) -> Secret {
        Secret(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The salt every Aerospike client hashes passwords with (bcrypt's base64: the 16 bytes
/// below), at cost 10, in the `$2a$` format.
const CLIENT_SALT: [u8; 16] = [
    0xf4, 0x6b, 0x0b, 0xbe, 0xcf, 0xfe, 0x8d, 0x1b, 0x06, 0x67, 0xd8, 0x4f, 0x6d, 0xc1, 0xd8, 0xa9,
];
const COST: u32 = 10;

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("hash a password: {0}")]
pub struct HashError(#[from] bcrypt::BcryptError);

/// What a client sends for `password` (`$2a$10$7EqJtq98hPqEX7fNZaFWoO…`, 60 characters).
pub fn client_hash(password: &str) -> Result<String, HashError> {
    Ok(bcrypt::hash_with_salt(password, COST, CLIENT_SALT)?
        .format_for_version(bcrypt::Version::TwoA))
}

/// Whether `credential` has the shape of a client's hash (what a site accepts as a password).
pub fn is_client_hash(credential: &str) -> bool {
    credential.len() == 60 && credential.starts_with("$2a$10$7EqJtq98hPqEX7fNZaFWoO")
}

/// What the site keeps for a client's hash: bcrypt under a random salt. Slow on purpose (run
/// it off the async workers).
pub fn seal(client_hash: &str) -> Result<String, HashError> {
    Ok(bcrypt::hash(client_hash, COST)?)
}

/// A new random password: 24 letters and digits (about 143 bits).
pub fn generate() -> String {
    use rand::distr::{Alphanumeric, SampleString as _};
    Alphanumeric.sample_string(&mut rand::rng(), 24)
}

/// Whether `client_hash` is the one `sealed` was made from. Slow on purpose.
pub fn matches(sealed: &str, client_hash: &str) -> bool {
    bcrypt::verify(client_hash, sealed).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_hashes_are_those_aerospike_clients_send() {
        // Vectors of the Aerospike clients' own tests.
        let admin = client_hash("admin").expect("hash");
        assert_eq!(admin, "$2a$10$7EqJtq98hPqEX7fNZaFWoO1mVO/4MLpGzsqojz6E9Gef6iXDjXdDa");
        assert_eq!(
            client_hash("").expect("hash"),
            "$2a$10$7EqJtq98hPqEX7fNZaFWoOLCkFexA7A9eoJ0Ew.mTDdk.E60D.9zS"
        );
        assert!(is_client_hash(&admin));
        assert!(!is_client_hash("admin"));
    }

    #[test]
    fn a_sealed_hash_takes_only_its_own_client_hash() {
        let hash = client_hash("secret").expect("hash");
        let sealed = seal(&hash).expect("seal");
        assert_ne!(sealed, hash);
        assert_ne!(seal(&hash).expect("seal"), sealed, "a random salt each time");
        assert!(matches(&sealed, &hash));
        assert!(!matches(&sealed, &client_hash("Secret").expect("hash")));
        assert!(!matches(&sealed, &sealed), "the stored value is no login");
        assert!(!matches("not a bcrypt hash", &hash));
    }
}

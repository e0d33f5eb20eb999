//! Aerospike's admin (security) messages, type 2: login, authentication of a connection, and
//! user and role administration. Pure encoding and decoding.
//!
//! After the proto header comes a 16-byte admin header (byte 1: result code, byte 2: command,
//! byte 3: field count, the rest zero), then the fields, each a 4-byte big-endian length
//! (counting the id byte that follows, not itself), a 1-byte id and the data. Every reply but
//! those carrying fields (a login's session, a query's records) is exactly the 24 bytes of the
//! two headers: clients read 24 bytes and put the socket back in their pool.

use bytes::Bytes;

use super::FrameError;

/// Size of the admin header after the proto header.
pub const HEADER: usize = 16;

/// What a server with security turned off answers every admin command; clients take it as
/// success for a login and carry on without one. (The command and field ids, and the other
/// result codes, are in `docs/wire-protocol.md`.)
pub const SECURITY_NOT_ENABLED: u8 = 52;

/// A decoded admin request: its command and fields in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRequest {
    pub command: u8,
    pub fields: Vec<(u8, Bytes)>,
}

impl AdminRequest {
    /// Decodes the body after the proto header. Fields must fill the body exactly.
    pub fn decode(body: &Bytes) -> Result<AdminRequest, FrameError> {
        if body.len() < HEADER {
            return Err(FrameError::Malformed("admin message shorter than its header"));
        }
        let (command, count) = (body[2], body[3]);
        let mut fields = Vec::with_capacity(usize::from(count));
        let mut at = HEADER;
        for _ in 0..count {
            let length = body
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .ok_or(FrameError::Malformed("admin field header past the end"))?;
            let length = usize::try_from(length)
                .ok()
                .filter(|&l| l >= 1)
                .ok_or(FrameError::Malformed("admin field without its id"))?;
            let end = at
                .checked_add(4 + length)
                .filter(|&end| end <= body.len())
                .ok_or(FrameError::Malformed("admin field past the end"))?;
            fields.push((body[at + 4], body.slice(at + 5..end)));
            at = end;
        }
        if at != body.len() {
            return Err(FrameError::Malformed("bytes after the last admin field"));
        }
        Ok(AdminRequest { command, fields })
    }
}

/// A reply body carrying `result` and no fields (24 bytes once framed).
pub fn reply(result: u8) -> [u8; HEADER] {
    let mut header = [0u8; HEADER];
    header[1] = result;
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request body as clients build it.
    fn body(command: u8, fields: &[(u8, &[u8])]) -> Bytes {
        let mut out = vec![0u8; HEADER];
        out[2] = command;
        out[3] = u8::try_from(fields.len()).expect("few fields");
        for (id, data) in fields {
            let length = u32::try_from(data.len() + 1).expect("short field");
            out.extend_from_slice(&length.to_be_bytes());
            out.push(*id);
            out.extend_from_slice(data);
        }
        out.into()
    }

    /// LOGIN (command 20) with USER (field 0) and CREDENTIAL (field 3).
    const LOGIN: u8 = 20;
    const USER: u8 = 0;
    const CREDENTIAL: u8 = 3;

    #[test]
    fn a_login_decodes_with_its_user_and_credential() {
        let hash = b"$2a$10$7EqJtq98hPqEX7fNZaFWoO1mVO/4MLpGzsqojz6E9Gef6iXDjXdDa";
        let login = body(LOGIN, &[(USER, b"admin"), (CREDENTIAL, hash)]);
        // The bytes the Aerospike clients send for this login (after the proto header).
        assert_eq!(&login[16..21], &[0, 0, 0, 6, 0]);
        assert_eq!(&login[26..31], &[0, 0, 0, 0x3d, 3]);
        let request = AdminRequest::decode(&login).expect("decode");
        assert_eq!(request.command, LOGIN);
        let ids: Vec<u8> = request.fields.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [USER, CREDENTIAL]);
        assert_eq!(&request.fields[0].1[..], b"admin");
        assert_eq!(request.fields[1].1.len(), 60);
    }

    #[test]
    fn malformed_admin_messages_are_refused_not_trusted() {
        let good = body(2, &[(USER, b"bob")]);
        assert!(AdminRequest::decode(&good.slice(..10)).is_err(), "short header");
        assert!(AdminRequest::decode(&good.slice(..good.len() - 1)).is_err(), "short field");
        let mut extra = good.to_vec();
        extra.push(0);
        assert!(AdminRequest::decode(&extra.into()).is_err(), "trailing bytes");
        let mut empty_field = vec![0u8; HEADER];
        empty_field[3] = 1;
        empty_field.extend_from_slice(&[0, 0, 0, 0]);
        assert!(AdminRequest::decode(&empty_field.into()).is_err(), "a field without an id");
        let mut huge = vec![0u8; HEADER];
        huge[3] = 1;
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0]);
        assert!(AdminRequest::decode(&huge.into()).is_err(), "a length past the end");
    }

    #[test]
    fn a_reply_is_a_bare_header_with_its_result() {
        let framed = super::super::frame(super::super::TYPE_ADMIN, &reply(52));
        assert_eq!(framed.len(), 24);
        assert_eq!(&framed[..8], &[2, 2, 0, 0, 0, 0, 0, 16]);
        assert_eq!(framed[9], 52);
    }
}

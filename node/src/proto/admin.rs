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
use crate::security::Secret;
use crate::security::db::{Privilege, code, privilege};

/// Size of the admin header after the proto header.
pub const HEADER: usize = 16;

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

/// Field ids.
pub mod field {
    pub const USER: u8 = 0;
    pub const PASSWORD: u8 = 1;
    pub const OLD_PASSWORD: u8 = 2;
    pub const CREDENTIAL: u8 = 3;
    pub const SESSION_TOKEN: u8 = 5;
    pub const SESSION_TTL: u8 = 6;
    pub const ROLES: u8 = 10;
    pub const ROLE: u8 = 11;
    pub const PRIVILEGES: u8 = 12;
    pub const WHITELIST: u8 = 13;
    pub const READ_QUOTA: u8 = 14;
    pub const WRITE_QUOTA: u8 = 15;
    pub const CONNECTIONS: u8 = 18;
}

/// Command ids.
pub mod command {
    pub const AUTHENTICATE: u8 = 0;
    pub const CREATE_USER: u8 = 1;
    pub const DROP_USER: u8 = 2;
    pub const SET_PASSWORD: u8 = 3;
    pub const CHANGE_PASSWORD: u8 = 4;
    pub const GRANT_ROLES: u8 = 5;
    pub const REVOKE_ROLES: u8 = 6;
    pub const QUERY_USERS: u8 = 9;
    pub const CREATE_ROLE: u8 = 10;
    pub const DROP_ROLE: u8 = 11;
    pub const GRANT_PRIVILEGES: u8 = 12;
    pub const REVOKE_PRIVILEGES: u8 = 13;
    pub const SET_QUOTAS: u8 = 15;
    pub const QUERY_ROLES: u8 = 16;
    pub const LOGIN: u8 = 20;
}

/// An admin command with its fields read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    /// A connection presents the session a login on this node issued.
    Authenticate {
        user: Option<String>,
        token: Bytes,
    },
    /// `credential` is the client's hash of the password.
    Login {
        user: String,
        credential: Secret,
    },
    CreateUser {
        user: String,
        password: Secret,
        roles: Vec<String>,
    },
    DropUser {
        user: String,
    },
    SetPassword {
        user: String,
        password: Secret,
    },
    /// A user changes its own password, proving the old one.
    ChangePassword {
        user: String,
        old: Secret,
        password: Secret,
    },
    GrantRoles {
        user: String,
        roles: Vec<String>,
    },
    RevokeRoles {
        user: String,
        roles: Vec<String>,
    },
    /// One user, or every user.
    QueryUsers {
        user: Option<String>,
    },
    CreateRole {
        role: String,
        privileges: Vec<Privilege>,
    },
    DropRole {
        role: String,
    },
    GrantPrivileges {
        role: String,
        privileges: Vec<Privilege>,
    },
    RevokePrivileges {
        role: String,
        privileges: Vec<Privilege>,
    },
    /// One role, or every role.
    QueryRoles {
        role: Option<String>,
    },
    /// Allowlists, quotas and commands this server does not know, with the result code that
    /// refuses them.
    Unsupported {
        command: u8,
        result: u8,
    },
}

impl AdminCommand {
    /// Reads a request's fields as its command needs them; a missing or malformed field is
    /// Aerospike's `INVALID_FIELD`.
    pub fn parse(request: &AdminRequest) -> Result<AdminCommand, u8> {
        let text = |id| -> Result<String, u8> {
            let data = request.field(id).ok_or(code::INVALID_FIELD)?;
            String::from_utf8(data.to_vec()).map_err(|_| code::INVALID_FIELD)
        };
        let optional = |id| request.field(id).map(|_| text(id)).transpose();
        let secret = |id| text(id).map(Secret::new);
        let roles = || request.field(field::ROLES).map_or(Err(code::INVALID_FIELD), decode_roles);
        let privileges =
            || request.field(field::PRIVILEGES).map_or(Ok(Vec::new()), decode_privileges);
        use command::*;
        Ok(match request.command {
            AUTHENTICATE => AdminCommand::Authenticate {
                user: optional(field::USER)?,
                token: request.field(field::SESSION_TOKEN).ok_or(code::INVALID_FIELD)?.clone(),
            },
            LOGIN => AdminCommand::Login {
                user: text(field::USER)?,
                credential: secret(field::CREDENTIAL)?,
            },
            CREATE_USER => AdminCommand::CreateUser {
                user: text(field::USER)?,
                password: secret(field::PASSWORD)?,
                roles: request.field(field::ROLES).map_or(Ok(Vec::new()), decode_roles)?,
            },
            DROP_USER => AdminCommand::DropUser { user: text(field::USER)? },
            SET_PASSWORD => AdminCommand::SetPassword {
                user: text(field::USER)?,
                password: secret(field::PASSWORD)?,
            },
            CHANGE_PASSWORD => AdminCommand::ChangePassword {
                user: text(field::USER)?,
                old: secret(field::OLD_PASSWORD)?,
                password: secret(field::PASSWORD)?,
            },
            GRANT_ROLES => AdminCommand::GrantRoles { user: text(field::USER)?, roles: roles()? },
            REVOKE_ROLES => AdminCommand::RevokeRoles { user: text(field::USER)?, roles: roles()? },
            QUERY_USERS => AdminCommand::QueryUsers { user: optional(field::USER)? },
            CREATE_ROLE if request.field(field::WHITELIST).is_some() => {
                AdminCommand::Unsupported { command: CREATE_ROLE, result: code::INVALID_COMMAND }
            }
            CREATE_ROLE
                if [field::READ_QUOTA, field::WRITE_QUOTA]
                    .iter()
                    .any(|&id| request.field(id).is_some()) =>
            {
                AdminCommand::Unsupported { command: CREATE_ROLE, result: code::QUOTAS_NOT_ENABLED }
            }
            CREATE_ROLE => {
                AdminCommand::CreateRole { role: text(field::ROLE)?, privileges: privileges()? }
            }
            DROP_ROLE => AdminCommand::DropRole { role: text(field::ROLE)? },
            GRANT_PRIVILEGES => AdminCommand::GrantPrivileges {
                role: text(field::ROLE)?,
                privileges: privileges()?,
            },
            REVOKE_PRIVILEGES => AdminCommand::RevokePrivileges {
                role: text(field::ROLE)?,
                privileges: privileges()?,
            },
            QUERY_ROLES => AdminCommand::QueryRoles { role: optional(field::ROLE)? },
            SET_QUOTAS => {
                AdminCommand::Unsupported { command: SET_QUOTAS, result: code::QUOTAS_NOT_ENABLED }
            }
            command => AdminCommand::Unsupported { command, result: code::INVALID_COMMAND },
        })
    }
}

impl AdminRequest {
    /// The first field of `id`.
    pub fn field(&self, id: u8) -> Option<&Bytes> {
        self.fields.iter().find(|(field, _)| *field == id).map(|(_, data)| data)
    }
}

/// Names as clients send them: a count, then each name after its length, one byte each.
fn decode_roles(data: &Bytes) -> Result<Vec<String>, u8> {
    let mut at = Reader(data);
    let count = at.byte()?;
    let roles = (0..count).map(|_| at.short_text()).collect::<Result<_, _>>()?;
    at.done()?;
    Ok(roles)
}

/// Privileges as clients send them: a count, then each code, and for the codes that can be
/// scoped the namespace and set (each after its one-byte length; empty for any).
fn decode_privileges(data: &Bytes) -> Result<Vec<Privilege>, u8> {
    let mut at = Reader(data);
    let count = at.byte()?;
    let mut privileges = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let code = at.byte()?;
        let (namespace, set) = if privilege::scoped(code) {
            (at.short_text()?, at.short_text()?)
        } else {
            (String::new(), String::new())
        };
        privileges.push(Privilege { code, namespace, set });
    }
    at.done()?;
    Ok(privileges)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, u8> {
        let (&byte, rest) = self.0.split_first().ok_or(code::INVALID_FIELD)?;
        self.0 = rest;
        Ok(byte)
    }

    fn short_text(&mut self) -> Result<String, u8> {
        let len = usize::from(self.byte()?);
        let (text, rest) = self.0.split_at_checked(len).ok_or(code::INVALID_FIELD)?;
        self.0 = rest;
        String::from_utf8(text.to_vec()).map_err(|_| code::INVALID_FIELD)
    }

    fn done(&self) -> Result<(), u8> {
        if self.0.is_empty() { Ok(()) } else { Err(code::INVALID_FIELD) }
    }
}

/// Builds a reply body of records, each an admin header and its fields.
#[derive(Debug, Default)]
pub struct ReplyBuilder {
    body: Vec<u8>,
    /// Where the current record's field count is.
    count_at: usize,
}

impl ReplyBuilder {
    /// Starts a record carrying `result`.
    pub fn record(&mut self, result: u8) -> &mut Self {
        self.count_at = self.body.len() + 3;
        self.body.extend_from_slice(&reply(result));
        self
    }

    pub fn bytes(&mut self, id: u8, data: &[u8]) -> &mut Self {
        let length = u32::try_from(data.len() + 1).unwrap_or(u32::MAX);
        self.body.extend_from_slice(&length.to_be_bytes());
        self.body.push(id);
        self.body.extend_from_slice(data);
        self.body[self.count_at] += 1;
        self
    }

    pub fn u32(&mut self, id: u8, value: u32) -> &mut Self {
        self.bytes(id, &value.to_be_bytes())
    }

    /// Names (at most 255, each cut to 255 bytes) as clients read them.
    pub fn names<'a>(&mut self, id: u8, names: impl IntoIterator<Item = &'a str>) -> &mut Self {
        let names: Vec<&str> = names.into_iter().take(255).collect();
        let mut data = vec![names.len() as u8];
        for name in names {
            push_short(&mut data, name);
        }
        self.bytes(id, &data)
    }

    pub fn privileges<'a>(
        &mut self,
        privileges: impl IntoIterator<Item = &'a Privilege>,
    ) -> &mut Self {
        let privileges: Vec<&Privilege> = privileges.into_iter().take(255).collect();
        let mut data = vec![privileges.len() as u8];
        for privilege in privileges {
            data.push(privilege.code);
            if privilege::scoped(privilege.code) {
                push_short(&mut data, &privilege.namespace);
                push_short(&mut data, &privilege.set);
            }
        }
        self.bytes(field::PRIVILEGES, &data)
    }

    /// The body, framing left to the caller.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.body)
    }
}

fn push_short(out: &mut Vec<u8>, text: &str) {
    let bytes = &text.as_bytes()[..text.len().min(255)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
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

    use super::command::LOGIN;
    use super::field::{CREDENTIAL, USER};

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
        let framed =
            super::super::frame(super::super::TYPE_ADMIN, &reply(code::SECURITY_NOT_ENABLED));
        assert_eq!(framed.len(), 24);
        assert_eq!(&framed[..8], &[2, 2, 0, 0, 0, 0, 0, 16]);
        assert_eq!(framed[9], 52);
    }

    #[test]
    fn commands_read_their_fields_as_clients_send_them() {
        let roles: &[u8] = &[2, 4, b'r', b'e', b'a', b'd', 1, b'x'];
        let fields = [(USER, &b"bob"[..]), (field::PASSWORD, b"hash"), (field::ROLES, roles)];
        let create = body(command::CREATE_USER, &fields);
        let parsed = AdminCommand::parse(&AdminRequest::decode(&create).expect("decode"));
        assert_eq!(
            parsed,
            Ok(AdminCommand::CreateUser {
                user: "bob".into(),
                password: Secret::new("hash".into()),
                roles: vec!["read".into(), "x".into()]
            })
        );
        // A global privilege carries no scope; a scoped one its namespace and set.
        let privileges: &[u8] = &[2, 1, 10, 4, b't', b'e', b's', b't', 0];
        let grant = body(
            command::GRANT_PRIVILEGES,
            &[(field::ROLE, b"r"), (field::PRIVILEGES, privileges)],
        );
        let parsed = AdminCommand::parse(&AdminRequest::decode(&grant).expect("decode"));
        assert_eq!(
            parsed,
            Ok(AdminCommand::GrantPrivileges {
                role: "r".into(),
                privileges: vec![
                    Privilege::global(privilege::SYS_ADMIN),
                    Privilege { code: privilege::READ, namespace: "test".into(), set: "".into() }
                ]
            })
        );
        // Lists that lie about their length are INVALID_FIELD, not a panic.
        for bad in [&[3u8, 1, b'x'][..], &[1, 9, b'x'], &[]] {
            let grant = body(command::GRANT_ROLES, &[(USER, b"bob"), (field::ROLES, bad)]);
            let parsed = AdminCommand::parse(&AdminRequest::decode(&grant).expect("decode"));
            assert_eq!(parsed, Err(code::INVALID_FIELD), "{bad:?}");
        }
        let missing = body(command::DROP_USER, &[]);
        let parsed = AdminCommand::parse(&AdminRequest::decode(&missing).expect("decode"));
        assert_eq!(parsed, Err(code::INVALID_FIELD));
    }

    #[test]
    fn reply_records_count_their_fields_and_round_trip_privileges() {
        let scoped = Privilege { code: privilege::WRITE, namespace: "ns".into(), set: "s".into() };
        let mut reply = ReplyBuilder::default();
        reply.record(0).bytes(field::ROLE, b"r").privileges([&scoped]);
        reply.record(code::QUERY_END);
        let body = reply.finish();
        assert_eq!(body[3], 2, "two fields in the first record");
        let first = AdminRequest::decode(&Bytes::copy_from_slice(&body[..body.len() - HEADER]))
            .expect("a record decodes like a request");
        let privileges = first.field(field::PRIVILEGES).expect("privileges");
        assert_eq!(decode_privileges(privileges), Ok(vec![scoped]));
        assert_eq!(body[body.len() - HEADER + 1], code::QUERY_END);
    }
}

//! AS_MSG: the binary message of record operations.
//!
//! Layout after the proto header (big-endian): header size (22), info1, info2, info3, info4,
//! result code, generation u32, record TTL / void time u32, transaction TTL u32, field count u16,
//! op count u16; then the fields (u32 size counting the type byte, type, data) and the ops (u32
//! size counting the 4 bytes after it, op type, particle type, version, name length, name, value).

use bytes::Bytes;

use super::FrameError;

/// Size of the AS_MSG header.
pub const HEADER_SIZE: u8 = 22;

/// info1 bits.
pub mod info1 {
    pub const READ: u8 = 1;
    pub const GET_ALL: u8 = 1 << 1;
    pub const SHORT_QUERY: u8 = 1 << 2;
    pub const BATCH: u8 = 1 << 3;
    pub const XDR: u8 = 1 << 4;
    pub const NOBINDATA: u8 = 1 << 5;
    pub const READ_MODE_AP_ALL: u8 = 1 << 6;
    pub const COMPRESS_RESPONSE: u8 = 1 << 7;
}

/// info2 bits.
pub mod info2 {
    pub const WRITE: u8 = 1;
    pub const DELETE: u8 = 1 << 1;
    pub const GENERATION: u8 = 1 << 2;
    pub const GENERATION_GT: u8 = 1 << 3;
    pub const DURABLE_DELETE: u8 = 1 << 4;
    pub const CREATE_ONLY: u8 = 1 << 5;
    pub const RELAX_AP_LONG_QUERY: u8 = 1 << 6;
    pub const RESPOND_ALL_OPS: u8 = 1 << 7;
}

/// info3 bits.
pub mod info3 {
    pub const LAST: u8 = 1;
    pub const COMMIT_MASTER: u8 = 1 << 1;
    pub const PARTITION_DONE: u8 = 1 << 2;
    pub const UPDATE_ONLY: u8 = 1 << 3;
    pub const CREATE_OR_REPLACE: u8 = 1 << 4;
    pub const REPLACE_ONLY: u8 = 1 << 5;
    pub const SC_READ_TYPE: u8 = 1 << 6;
    pub const SC_READ_RELAX: u8 = 1 << 7;
}

/// Field types.
pub mod field {
    pub const NAMESPACE: u8 = 0;
    pub const SET: u8 = 1;
    pub const KEY: u8 = 2;
    pub const DIGEST: u8 = 4;
    pub const TASK_ID: u8 = 7;
    pub const SOCKET_TIMEOUT: u8 = 9;
    pub const RECORDS_PER_SECOND: u8 = 10;
    pub const PID_ARRAY: u8 = 11;
    pub const DIGEST_ARRAY: u8 = 12;
    pub const MAX_RECORDS: u8 = 13;
    pub const BVAL_ARRAY: u8 = 15;
    pub const INDEX_RANGE: u8 = 22;
    pub const INDEX_CONTEXT: u8 = 23;
    pub const INDEX_TYPE: u8 = 26;
    pub const UDF_PACKAGE_NAME: u8 = 30;
    pub const UDF_FUNCTION: u8 = 31;
    pub const UDF_ARGLIST: u8 = 32;
    pub const UDF_OP: u8 = 33;
    pub const QUERY_BINS: u8 = 40;
    pub const BATCH_INDEX: u8 = 41;
    pub const BATCH_INDEX_WITH_SET: u8 = 42;
    pub const FILTER_EXP: u8 = 43;
}

/// Operation types.
pub mod op {
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const CDT_READ: u8 = 3;
    pub const CDT_MODIFY: u8 = 4;
    pub const INCR: u8 = 5;
    pub const EXP_READ: u8 = 7;
    pub const EXP_MODIFY: u8 = 8;
    pub const APPEND: u8 = 9;
    pub const PREPEND: u8 = 10;
    pub const TOUCH: u8 = 11;
    pub const BIT_READ: u8 = 12;
    pub const BIT_MODIFY: u8 = 13;
    pub const DELETE: u8 = 14;
    pub const HLL_READ: u8 = 15;
    pub const HLL_MODIFY: u8 = 16;
}

/// A field: type and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub kind: u8,
    pub data: Bytes,
}

/// An operation on a bin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub kind: u8,
    pub particle: u8,
    pub name: String,
    pub value: Bytes,
}

/// A whole AS_MSG.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Msg {
    pub info1: u8,
    pub info2: u8,
    pub info3: u8,
    pub info4: u8,
    pub result_code: u8,
    pub generation: u32,
    pub record_ttl: u32,
    pub transaction_ttl: u32,
    pub fields: Vec<Field>,
    pub ops: Vec<Op>,
}

impl Msg {
    /// The first field of a type.
    pub fn field(&self, kind: u8) -> Option<&Field> {
        self.fields.iter().find(|f| f.kind == kind)
    }

    /// A field's data as UTF-8 text.
    pub fn field_str(&self, kind: u8) -> Result<Option<&str>, FrameError> {
        self.field(kind)
            .map(|f| {
                std::str::from_utf8(&f.data)
                    .map_err(|_| FrameError::Malformed("field is not UTF-8"))
            })
            .transpose()
    }

    /// Decodes one AS_MSG body; `body` must hold exactly the message.
    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let mut r = Cursor::new(body);
        let header_size = r.u8()?;
        if header_size != HEADER_SIZE {
            return Err(FrameError::Malformed("AS_MSG header size is not 22"));
        }
        let mut msg = Msg {
            info1: r.u8()?,
            info2: r.u8()?,
            info3: r.u8()?,
            info4: r.u8()?,
            result_code: r.u8()?,
            generation: r.u32()?,
            record_ttl: r.u32()?,
            transaction_ttl: r.u32()?,
            ..Msg::default()
        };
        let field_count = r.u16()?;
        let op_count = r.u16()?;
        msg.fields = decode_fields(&mut r, field_count)?;
        msg.ops = decode_ops(&mut r, op_count)?;
        if !r.rest().is_empty() {
            return Err(FrameError::Malformed("bytes after the last op"));
        }
        Ok(msg)
    }

    /// Encodes the message body (without the proto header).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoded body to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(HEADER_SIZE);
        out.extend_from_slice(&[self.info1, self.info2, self.info3, self.info4, self.result_code]);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.record_ttl.to_be_bytes());
        out.extend_from_slice(&self.transaction_ttl.to_be_bytes());
        out.extend_from_slice(&(self.fields.len() as u16).to_be_bytes());
        out.extend_from_slice(&(self.ops.len() as u16).to_be_bytes());
        for field in &self.fields {
            out.extend_from_slice(&(field.data.len() as u32 + 1).to_be_bytes());
            out.push(field.kind);
            out.extend_from_slice(&field.data);
        }
        for op in &self.ops {
            out.extend_from_slice(&((4 + op.name.len() + op.value.len()) as u32).to_be_bytes());
            out.extend_from_slice(&[op.kind, op.particle, 0, op.name.len() as u8]);
            out.extend_from_slice(op.name.as_bytes());
            out.extend_from_slice(&op.value);
        }
    }

    fn encoded_len(&self) -> usize {
        22 + self.fields.iter().map(|f| 5 + f.data.len()).sum::<usize>()
            + self.ops.iter().map(|o| 8 + o.name.len() + o.value.len()).sum::<usize>()
    }
}

/// Decodes `count` fields from the cursor.
pub(crate) fn decode_fields(r: &mut Cursor<'_>, count: u16) -> Result<Vec<Field>, FrameError> {
    let mut fields = Vec::with_capacity(usize::from(count).min(64));
    for _ in 0..count {
        let size = r.u32()? as usize;
        let data_len = size.checked_sub(1).ok_or(FrameError::Malformed("field size 0"))?;
        let kind = r.u8()?;
        fields.push(Field { kind, data: Bytes::copy_from_slice(r.take(data_len)?) });
    }
    Ok(fields)
}

/// Decodes `count` ops from the cursor.
pub(crate) fn decode_ops(r: &mut Cursor<'_>, count: u16) -> Result<Vec<Op>, FrameError> {
    let mut ops = Vec::with_capacity(usize::from(count).min(1024));
    for _ in 0..count {
        let size = r.u32()? as usize;
        let kind = r.u8()?;
        let particle = r.u8()?;
        let _version = r.u8()?;
        let name_len = usize::from(r.u8()?);
        let value_len = size
            .checked_sub(4 + name_len)
            .ok_or(FrameError::Malformed("op size smaller than its header"))?;
        let name = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| FrameError::Malformed("bin name is not UTF-8"))?
            .to_owned();
        let value = Bytes::copy_from_slice(r.take(value_len)?);
        ops.push(Op { kind, particle, name, value });
    }
    Ok(ops)
}

/// A bounds-checked reader over bytes from the network.
#[derive(Debug)]
pub(crate) struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.0
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Malformed("message ends early"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        self.take(N)?.try_into().map_err(|_| FrameError::Malformed("message ends early"))
    }
    pub(crate) fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, FrameError> {
        self.array().map(u16::from_be_bytes)
    }
    pub(crate) fn u32(&mut self) -> Result<u32, FrameError> {
        self.array().map(u32::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Msg {
        Msg {
            info1: info1::READ | info1::GET_ALL,
            info3: info3::LAST,
            generation: 3,
            record_ttl: 100,
            fields: vec![
                Field { kind: field::NAMESPACE, data: Bytes::from_static(b"test") },
                Field { kind: field::DIGEST, data: Bytes::from(vec![1u8; 20]) },
            ],
            ops: vec![Op {
                kind: op::WRITE,
                particle: 1,
                name: "age".into(),
                value: Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 42]),
            }],
            ..Msg::default()
        }
    }

    #[test]
    fn golden_bytes() {
        let msg = Msg {
            info1: 1,
            fields: vec![Field { kind: field::NAMESPACE, data: Bytes::from_static(b"ns") }],
            ops: vec![Op { kind: op::READ, particle: 0, name: "b".into(), value: Bytes::new() }],
            ..Msg::default()
        };
        let expected: &[u8] = &[
            22, 1, 0, 0, 0, 0, // header size, info1..4, result
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // generation, ttl, transaction ttl
            0, 1, 0, 1, // fields, ops
            0, 0, 0, 3, 0, b'n', b's', // field: size 3, type 0, "ns"
            0, 0, 0, 5, 1, 0, 0, 1,
            b'b', // op: size 5, read, particle 0, version, name len, "b"
        ];
        assert_eq!(msg.encode(), expected);
        assert_eq!(Msg::decode(expected), Ok(msg));
    }

    #[test]
    fn round_trip() {
        let msg = sample();
        assert_eq!(Msg::decode(&msg.encode()), Ok(msg));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Msg::decode(&bytes);
        }

        #[test]
        fn truncations_are_errors(cut in 0usize..60) {
            let bytes = sample().encode();
            prop_assume!(cut < bytes.len());
            prop_assert!(Msg::decode(&bytes[..cut]).is_err());
        }
    }
}

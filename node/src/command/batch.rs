//! Batch commands in the batch-index format: a BATCH_INDEX field holds rows (index, digest,
//! flags, then the row's own header, fields and ops, or REPEAT to reuse the previous row's).
//! Each row runs as the single-record command it describes, here or at the partition owner;
//! every row gets an answer carrying its index, and a separate LAST message ends the stream.

use bytes::Bytes;

use std::net::SocketAddr;
use std::sync::Arc;

use super::{Route, error_reply, result, route, run_single, send_last};
use crate::node::{NodeState, Stats};
use crate::proto::msg::{Cursor, Field, Msg, decode_fields, decode_ops, field};
use crate::proto::{FrameError, TYPE_MSG};
use crate::security::Caller;
use crate::server::{Origin, ReplySink};
use crate::storage::Digest;

const ROW_REPEAT: u8 = 0x01;
const ROW_INFO: u8 = 0x02;
const ROW_GENERATION: u8 = 0x04;
const ROW_TTL: u8 = 0x08;
const ROW_INFO4: u8 = 0x10;

/// Reply bytes gathered before a frame is written.
const FRAME_TARGET: usize = 64 << 10;

/// One decoded row: its index and the single-record request it stands for. Rows that REPEAT
/// share their request: a few bytes per row cannot make the node copy a large request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub index: u32,
    pub digest: Digest,
    pub request: Arc<Msg>,
}

/// Decodes the rows of a BATCH_INDEX field.
pub fn decode_rows(data: &[u8]) -> Result<Vec<Row>, FrameError> {
    let mut r = Cursor::new(data);
    let count = r.u32()?;
    let _flags = r.u8()?;
    let mut rows: Vec<Row> = Vec::with_capacity(count.min(10_000) as usize);
    for _ in 0..count {
        let index = r.u32()?;
        let digest: Digest =
            r.take(20)?.try_into().map_err(|_| FrameError::Malformed("short digest"))?;
        let flags = r.u8()?;
        let request = if flags & ROW_REPEAT != 0 {
            rows.last()
                .map(|previous| Arc::clone(&previous.request))
                .ok_or(FrameError::Malformed("first batch row repeats nothing"))?
        } else {
            let mut request = Msg::default();
            if flags & ROW_INFO != 0 {
                request.info1 = r.u8()?;
                request.info2 = r.u8()?;
                request.info3 = r.u8()?;
            }
            if flags & ROW_INFO4 != 0 {
                request.info4 = r.u8()?;
            }
            if flags & ROW_GENERATION != 0 {
                request.generation = u32::from(r.u16()?);
            }
            if flags & ROW_TTL != 0 {
                request.record_ttl = r.u32()?;
            }
            let field_count = r.u16()?;
            let op_count = r.u16()?;
            request.fields = decode_fields(&mut r, field_count)?;
            request.ops = decode_ops(&mut r, op_count)?;
            Arc::new(request)
        };
        rows.push(Row { index, digest, request });
    }
    Ok(rows)
}

/// Runs a batch and streams one answer per row, then LAST.
pub async fn execute<W: tokio::io::AsyncWrite + Unpin>(
    state: &NodeState,
    msg: &Msg,
    (origin, caller): (Origin, Option<&Caller>),
    out: &mut ReplySink<'_, W>,
) -> std::io::Result<()> {
    Stats::bump(&state.stats.batch_requests);
    let rows = match msg.field(field::BATCH_INDEX).map(|f| decode_rows(&f.data)) {
        Some(Ok(rows)) => rows,
        Some(Err(_)) => return send_last(out, Vec::new(), result::PARAMETER_ERROR).await,
        // The older batch formats are not served.
        None => return send_last(out, Vec::new(), result::UNSUPPORTED_FEATURE).await,
    };
    if msg.field(field::FILTER_EXP).is_some() {
        return send_last(out, Vec::new(), result::UNSUPPORTED_FEATURE).await;
    }
    let mut buffer = Vec::with_capacity(FRAME_TARGET);
    for row in &rows {
        let mut reply = match super::authorize(state, caller, &row.request) {
            Ok(()) => run_row(state, row, origin).await,
            Err(code) => error_reply(code),
        };
        reply.transaction_ttl = row.index;
        if matches!(reply.result_code, result::KEY_NOT_FOUND | 27) {
            // The client reads no ops for these codes.
            reply.ops.clear();
        }
        reply.encode_into(&mut buffer);
        if buffer.len() >= FRAME_TARGET {
            out.send(&buffer).await?;
            buffer.clear();
        }
    }
    send_last(out, buffer, result::OK).await
}

/// Runs a row as the single-record command it stands for, routed like one: refused, run here,
/// or run at its partition's owner.
async fn run_row(state: &NodeState, row: &Row, origin: Origin) -> Msg {
    let mut request = Msg::clone(&row.request);
    request.fields.retain(|f| f.kind != field::DIGEST);
    request
        .fields
        .push(Field { kind: field::DIGEST, data: Bytes::copy_from_slice(row.digest.as_ref()) });
    match route(state, &request, origin) {
        Route::Local(target) => run_single(state, &request, &target).await,
        Route::Forward(owner) => forward_row(state, &request, owner).await,
        Route::Refuse(code) => error_reply(code),
    }
}

/// Runs a row at its partition's owner and returns the owner's answer.
async fn forward_row(state: &NodeState, request: &Msg, owner: SocketAddr) -> Msg {
    let framed = crate::proto::frame(TYPE_MSG, &request.encode());
    let reply = match state.forward(owner, &framed).await {
        Ok(reply) => reply,
        Err(error) => {
            tracing::warn!(%error, "forward batch row to partition owner failed");
            return error_reply(result::TIMEOUT);
        }
    };
    reply.get(8..).and_then(|body| Msg::decode(body).ok()).unwrap_or_else(|| {
        tracing::warn!("partition owner sent an unreadable reply to a batch row");
        error_reply(result::SERVER_ERROR)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::msg::{info1, op};

    fn row_bytes(index: u32, digest: u8, repeat: bool) -> Vec<u8> {
        let mut out = index.to_be_bytes().to_vec();
        out.extend_from_slice(&[digest; 20]);
        if repeat {
            out.push(ROW_REPEAT);
            return out;
        }
        out.push(ROW_INFO | ROW_TTL);
        out.extend_from_slice(&[info1::READ, 0, 0]);
        out.extend_from_slice(&7u32.to_be_bytes());
        out.extend_from_slice(&2u16.to_be_bytes()); // fields
        out.extend_from_slice(&1u16.to_be_bytes()); // ops
        out.extend_from_slice(&[0, 0, 0, 5, field::NAMESPACE, b't', b'e', b's', b't']);
        out.extend_from_slice(&[0, 0, 0, 1, field::SET]);
        out.extend_from_slice(&[0, 0, 0, 5, op::READ, 0, 0, 1, b'a']);
        out
    }

    #[test]
    fn rows_decode_with_repeats() {
        let mut data = 3u32.to_be_bytes().to_vec();
        data.push(0x0d);
        data.extend(row_bytes(0, 1, false));
        data.extend(row_bytes(1, 2, true));
        data.extend(row_bytes(2, 3, true));
        let rows = decode_rows(&data).expect("rows");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].index, 2);
        assert_eq!(rows[2].digest, Digest([3; 20]));
        assert_eq!(rows[2].request, rows[0].request);
        assert!(Arc::ptr_eq(&rows[2].request, &rows[0].request), "a repeat shares, not copies");
        assert_eq!(rows[0].request.record_ttl, 7);
        assert_eq!(rows[0].request.field_str(field::NAMESPACE), Ok(Some("test")));
        assert_eq!(rows[0].request.ops[0].name, "a");
    }

    #[test]
    fn malformed_rows_are_errors_not_panics() {
        let mut first_repeats = 1u32.to_be_bytes().to_vec();
        first_repeats.push(0);
        first_repeats.extend(row_bytes(0, 1, true));
        assert!(decode_rows(&first_repeats).is_err());
        let mut data = 2u32.to_be_bytes().to_vec();
        data.push(0);
        data.extend(row_bytes(0, 1, false));
        assert!(decode_rows(&data).is_err(), "second row missing");
        for cut in 0..data.len() {
            let _ = decode_rows(&data[..cut]);
        }
    }
}

//! Partition scans: the client names partitions (PID_ARRAY) or resume points (DIGEST_ARRAY, the
//! last digest it saw in a partition); the node streams the visible records of each partition it
//! masters in digest order, a PARTITION_DONE marker (partition id in the generation slot) after
//! each, and LAST at the end. A partition it does not master is answered "unavailable" so the
//! client refreshes its map and asks the owner.

use bytes::Bytes;
use ferry_topology::placement::{PARTITIONS, partition_of};

use super::{ops, result, send_last};
use crate::node::{NodeState, Stats};
use crate::proto::msg::{Field, Msg, field, info1, info3, op};
use crate::record::{self, Record};
use crate::server::ReplySink;
use crate::storage::Digest;

/// Records read from storage per step; no storage iterator is held across a network write.
const CHUNK: usize = 256;
/// Reply bytes gathered before a frame is written.
const FRAME_TARGET: usize = 64 << 10;

/// Where a scan starts in one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub partition: u16,
    /// Continue strictly after this digest.
    pub after: Option<Digest>,
}

/// The partitions and resume points a scan request names.
pub fn starts(msg: &Msg) -> Result<Vec<Start>, u8> {
    let mut starts = Vec::new();
    if let Some(pids) = msg.field(field::PID_ARRAY) {
        if pids.data.len() % 2 != 0 {
            return Err(result::PARAMETER_ERROR);
        }
        for pid in pids.data.chunks_exact(2) {
            let partition = u16::from_le_bytes([pid[0], pid[1]]);
            if partition >= PARTITIONS {
                return Err(result::PARAMETER_ERROR);
            }
            starts.push(Start { partition, after: None });
        }
    }
    if let Some(digests) = msg.field(field::DIGEST_ARRAY) {
        if digests.data.len() % 20 != 0 {
            return Err(result::PARAMETER_ERROR);
        }
        for digest in digests.data.chunks_exact(20) {
            let digest: Digest = digest.try_into().map_err(|_| result::PARAMETER_ERROR)?;
            starts.push(Start { partition: partition_of(&digest), after: Some(digest) });
        }
    }
    if msg.field(field::PID_ARRAY).is_none() && msg.field(field::DIGEST_ARRAY).is_none() {
        // A scan without a partition list covers the whole namespace (older clients).
        starts.extend((0..PARTITIONS).map(|partition| Start { partition, after: None }));
    }
    Ok(starts)
}

/// Runs a scan and streams its records, markers and LAST.
pub async fn execute<W: tokio::io::AsyncWrite + Unpin>(
    state: &NodeState,
    msg: &Msg,
    out: &mut ReplySink<'_, W>,
) -> std::io::Result<()> {
    Stats::bump(&state.stats.scans);
    let unsupported = [field::FILTER_EXP, field::INDEX_RANGE, field::UDF_OP, field::UDF_FUNCTION];
    if unsupported.iter().any(|&kind| msg.field(kind).is_some())
        || msg.ops.iter().any(|o| o.kind != op::READ)
    {
        return send_last(out, Vec::new(), result::UNSUPPORTED_FEATURE).await;
    }
    let namespace = match msg.field_str(field::NAMESPACE) {
        Ok(Some(ns)) if state.namespace(ns).is_some() => ns.to_owned(),
        Ok(_) => return send_last(out, Vec::new(), result::INVALID_NAMESPACE).await,
        Err(_) => return send_last(out, Vec::new(), result::PARAMETER_ERROR).await,
    };
    let set = match msg.field_str(field::SET) {
        Ok(set) => set.filter(|s| !s.is_empty()).map(str::to_owned),
        Err(_) => return send_last(out, Vec::new(), result::PARAMETER_ERROR).await,
    };
    let starts = match starts(msg) {
        Ok(starts) => starts,
        Err(code) => return send_last(out, Vec::new(), code).await,
    };
    let max_records = msg
        .field(field::MAX_RECORDS)
        .and_then(|f| <[u8; 8]>::try_from(f.data.as_ref()).ok())
        .map_or(u64::MAX, u64::from_be_bytes);
    let header_only = msg.info1 & info1::NOBINDATA != 0;
    let now = record::now_citrusleaf_secs();
    let mut sent = 0u64;
    let mut buffer = Vec::with_capacity(FRAME_TARGET);
    'partitions: for start in starts {
        if !state.cluster().is_master(&namespace, start.partition) {
            let marker = Msg {
                info3: info3::PARTITION_DONE,
                result_code: result::PARTITION_UNAVAILABLE,
                generation: u32::from(start.partition),
                ..Msg::default()
            };
            marker.encode_into(&mut buffer);
            continue;
        }
        let mut after = start.after;
        loop {
            let chunk = match read_chunk(state, &namespace, start.partition, after.as_ref()) {
                Ok(chunk) => chunk,
                Err(error) => {
                    tracing::error!(%error, namespace, "scan failed reading storage");
                    return send_last(out, buffer, result::SERVER_ERROR).await;
                }
            };
            let exhausted = chunk.len() < CHUNK;
            for (digest, record) in chunk {
                after = Some(digest);
                if !record.visible(now) || set.as_deref().is_some_and(|s| s != record.set) {
                    continue;
                }
                if sent == max_records {
                    break 'partitions;
                }
                sent += 1;
                record_msg(&namespace, &digest, &record, msg, header_only).encode_into(&mut buffer);
                if buffer.len() >= FRAME_TARGET {
                    out.send(&buffer).await?;
                    out.flush().await?;
                    buffer.clear();
                }
            }
            if exhausted {
                break;
            }
        }
        let done = Msg {
            info3: info3::PARTITION_DONE,
            generation: u32::from(start.partition),
            ..Msg::default()
        };
        done.encode_into(&mut buffer);
    }
    send_last(out, buffer, result::OK).await
}

fn read_chunk(
    state: &NodeState,
    namespace: &str,
    partition: u16,
    after: Option<&Digest>,
) -> Result<Vec<(Digest, Record)>, crate::storage::StoreError> {
    state.store.scan_partition(namespace, partition, after)?.take(CHUNK).collect()
}

fn record_msg(
    namespace: &str,
    digest: &Digest,
    record: &Record,
    request: &Msg,
    header_only: bool,
) -> Msg {
    let mut fields = vec![
        Field { kind: field::NAMESPACE, data: Bytes::copy_from_slice(namespace.as_bytes()) },
        Field { kind: field::SET, data: Bytes::copy_from_slice(record.set.as_bytes()) },
        Field { kind: field::DIGEST, data: Bytes::copy_from_slice(digest.as_ref()) },
    ];
    if let Some(key) = &record.key {
        fields.push(Field { kind: field::KEY, data: key.clone() });
    }
    let bins = if header_only { Vec::new() } else { ops::read(request, record) };
    Msg {
        generation: u32::from(record.generation),
        record_ttl: record.void_time,
        fields,
        ops: bins,
        ..Msg::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_from_pid_and_digest_arrays() {
        let mut digest = [9u8; 20];
        digest[0] = 0x05;
        digest[1] = 0x01;
        let msg = Msg {
            fields: vec![
                Field { kind: field::PID_ARRAY, data: Bytes::from_static(&[1, 0, 0xff, 0x0f]) },
                Field { kind: field::DIGEST_ARRAY, data: Bytes::copy_from_slice(&digest) },
            ],
            ..Msg::default()
        };
        let found = starts(&msg).expect("starts");
        assert_eq!(found[0], Start { partition: 1, after: None });
        assert_eq!(found[1], Start { partition: 4095, after: None });
        assert_eq!(found[2], Start { partition: 0x105, after: Some(Digest(digest)) });
    }

    #[test]
    fn bad_arrays_are_parameter_errors() {
        let odd = Msg {
            fields: vec![Field { kind: field::PID_ARRAY, data: Bytes::from_static(&[1]) }],
            ..Msg::default()
        };
        assert_eq!(starts(&odd), Err(result::PARAMETER_ERROR));
        let out_of_range = Msg {
            fields: vec![Field { kind: field::PID_ARRAY, data: Bytes::from_static(&[0, 0x10]) }],
            ..Msg::default()
        };
        assert_eq!(starts(&out_of_range), Err(result::PARAMETER_ERROR));
        let whole = Msg::default();
        assert_eq!(starts(&whole).map(|s| s.len()), Ok(4096));
    }
}

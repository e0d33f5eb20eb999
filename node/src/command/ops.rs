//! The meaning of single-record commands, as pure functions of the stored record, the request
//! and the clock: which new version (if any) to store and what to answer. No I/O here; the
//! caller holds the record's lock, reads, calls in, writes and commits.

use bytes::Bytes;

use crate::proto::msg::{Msg, Op, info1, info2, info3, op};
use crate::record::{
    Bin, CITRUSLEAF_EPOCH_SECS, LimitError, Record, Value, check_limits, next_generation,
    next_last_update, particle,
};

/// Aerospike result codes the node answers with.
pub mod result {
    pub const OK: u8 = 0;
    pub const SERVER_ERROR: u8 = 1;
    pub const KEY_NOT_FOUND: u8 = 2;
    pub const GENERATION_ERROR: u8 = 3;
    pub const PARAMETER_ERROR: u8 = 4;
    pub const KEY_EXISTS: u8 = 5;
    pub const TIMEOUT: u8 = 9;
    pub const PARTITION_UNAVAILABLE: u8 = 11;
    pub const BIN_TYPE_ERROR: u8 = 12;
    pub const RECORD_TOO_BIG: u8 = 13;
    pub const UNSUPPORTED_FEATURE: u8 = 16;
    pub const INVALID_NAMESPACE: u8 = 20;
    pub const BIN_NAME_TOO_LONG: u8 = 21;
    pub const FORBIDDEN: u8 = 22;
}

/// TTL values with special meaning on the wire.
const TTL_NEVER: u32 = u32::MAX; // -1
const TTL_DONT_UPDATE: u32 = u32::MAX - 1; // -2

/// The clock and namespace settings a command runs under.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub now_ms: u64,
    /// Seconds since the Aerospike epoch.
    pub now_secs: u32,
    /// Namespace default TTL in seconds (0: never expire).
    pub default_ttl: u32,
    /// This site's id, stamped on every version a client writes.
    pub site_id: u8,
    /// The namespace's `max-record-size` in bytes.
    pub max_record_size: u32,
}

/// What a write command decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The version to store.
    pub record: Record,
    /// Bins to answer with (reads inside an operate; empty for plain writes).
    pub reply_ops: Vec<Op>,
}

/// Void time for a request TTL, given the current void time (for "don't update").
fn void_time(ttl: u32, current: Option<u32>, ctx: &Context) -> u32 {
    let seconds = match ttl {
        TTL_NEVER => return 0,
        TTL_DONT_UPDATE if current.is_some() => return current.unwrap_or(0),
        TTL_DONT_UPDATE | 0 => ctx.default_ttl,
        seconds => seconds,
    };
    if seconds == 0 { 0 } else { ctx.now_secs.saturating_add(seconds) }
}

/// Whether a request's generation condition admits the existing record.
fn generation_admits(msg: &Msg, existing: Option<&Record>) -> bool {
    let current = existing.map_or(0, |r| u32::from(r.generation));
    if msg.info2 & info2::GENERATION != 0 {
        return msg.generation == current;
    }
    if msg.info2 & info2::GENERATION_GT != 0 {
        return msg.generation > current;
    }
    true
}

/// Runs a write command (put, operate with writes, touch) against the visible record.
pub fn write(
    msg: &Msg,
    set: &str,
    key: Option<&Bytes>,
    existing: Option<&Record>,
    ctx: &Context,
) -> Result<WriteOutcome, u8> {
    let live = existing.filter(|r| r.visible(ctx.now_secs));
    if msg.info2 & info2::CREATE_ONLY != 0 && live.is_some() {
        return Err(result::KEY_EXISTS);
    }
    let must_exist = msg.info3 & (info3::UPDATE_ONLY | info3::REPLACE_ONLY) != 0;
    if must_exist && live.is_none() {
        return Err(result::KEY_NOT_FOUND);
    }
    if !generation_admits(msg, live) {
        return Err(result::GENERATION_ERROR);
    }
    let replace = msg.info3 & (info3::REPLACE_ONLY | info3::CREATE_OR_REPLACE) != 0;
    let only_touch = !msg.ops.is_empty() && msg.ops.iter().all(|o| o.kind == op::TOUCH);
    if only_touch && live.is_none() {
        return Err(result::KEY_NOT_FOUND);
    }
    let mut record = match live {
        Some(record) if !replace => record.clone(),
        _ => Record {
            generation: 0,
            last_update_ms: 0,
            created_ms: 0,
            void_time: 0,
            origin_site: ctx.site_id,
            tombstone: false,
            set: set.to_owned(),
            key: None,
            bins: Vec::new(),
            logged_lsn: None,
        },
    };
    let respond_all = msg.info2 & info2::RESPOND_ALL_OPS != 0;
    let mut reply_ops = Vec::new();
    for operation in &msg.ops {
        match operation.kind {
            op::WRITE => {
                if operation.particle != particle::NULL && !particle::storable(operation.particle) {
                    return Err(result::PARAMETER_ERROR);
                }
                let value = Value { particle: operation.particle, data: operation.value.clone() };
                record.set_bin(&operation.name, value);
            }
            op::INCR => {
                let incremented = increment(record.bin(&operation.name), operation)?;
                record.set_bin(&operation.name, incremented);
            }
            op::APPEND | op::PREPEND => {
                let joined = concatenate(record.bin(&operation.name), operation)?;
                record.set_bin(&operation.name, joined);
            }
            op::TOUCH => {}
            op::DELETE => record.bins.clear(),
            // `get_header` asks for the metadata, which every reply carries: no result slot.
            op::READ if operation.name.is_empty() && msg.info1 & info1::NOBINDATA != 0 => continue,
            op::READ if respond_all => {
                // One result per op: the bin's value, or NULL under its name.
                let found = record.bin(&operation.name).map(bin_op);
                reply_ops.push(found.unwrap_or_else(|| null_op(operation)));
                continue;
            }
            op::READ => {
                reply_ops.extend(record.bin(&operation.name).map(bin_op));
                continue;
            }
            _ => return Err(result::UNSUPPORTED_FEATURE),
        }
        if respond_all {
            reply_ops.push(null_op(operation));
        }
    }
    if msg.info1 & info1::GET_ALL != 0 {
        // `get()` inside an operate answers the whole record after the writes, once.
        reply_ops = record.bins.iter().map(bin_op).collect();
    }
    if record.bins.is_empty() && !only_touch {
        // Aerospike keeps no record without bins: a write that removes the last one deletes
        // the record, and one that would create a record without bins finds nothing.
        let live = live.ok_or(result::KEY_NOT_FOUND)?;
        return Ok(WriteOutcome {
            record: live.tombstone_after(ctx.site_id, ctx.now_ms),
            reply_ops,
        });
    }
    let previous = live.map(|r| (r.generation, r.void_time));
    record.generation = next_generation(live.map(|r| r.generation));
    record.last_update_ms = next_last_update(existing.map(|r| r.last_update_ms), ctx.now_ms);
    // Written over a live version, the record continues its incarnation. Written where none
    // is visible (never written, deleted, expired), it starts over at generation 1, as in
    // Aerospike, in a new incarnation: that beats the tombstone or expired copy here and
    // every older version at other sites under the generation policy (`ferry_xdr::conflict`).
    record.created_ms = live.map_or(record.last_update_ms, |r| r.created_ms);
    record.void_time = void_time(msg.record_ttl, previous.map(|(_, v)| v), ctx);
    record.origin_site = ctx.site_id;
    record.tombstone = false;
    record.logged_lsn = None;
    record.set = set.to_owned();
    if let Some(key) = key {
        record.key = Some(key.clone());
    }
    check_limits(&record, ctx.max_record_size).map_err(limit_code)?;
    Ok(WriteOutcome { record, reply_ops })
}

/// The result code Aerospike answers a write that breaks `limit` with.
fn limit_code(limit: LimitError) -> u8 {
    match limit {
        LimitError::SetName(_) | LimitError::Bins(_) => result::PARAMETER_ERROR,
        LimitError::BinName(_) => result::BIN_NAME_TOO_LONG,
        LimitError::TooBig { .. } => result::RECORD_TOO_BIG,
    }
}

/// A touch command: the next generation and last-update time, the expiry `record_ttl` asks
/// for (as a put's), bins unchanged.
pub fn touch_request(record_ttl: u32) -> Msg {
    let touch = Op { kind: op::TOUCH, particle: 0, name: String::new(), value: Bytes::new() };
    Msg { info2: info2::WRITE, record_ttl, ops: vec![touch], ..Msg::default() }
}

/// Aerospike's read-touch-ttl-percent: when a read asking for `percent` (1..=100; 0 is the
/// namespace default, which is off, and 0xFFFFFFFF says never) finds the record with less than
/// `percent` of the TTL its last write gave it left, the TTL to touch it with (that same TTL).
pub fn read_touch_ttl(percent: u32, record: &Record, now_secs: u32) -> Option<u32> {
    if !(1..=100).contains(&percent) || record.void_time == 0 {
        return None;
    }
    let written_secs = (record.last_update_ms / 1000).saturating_sub(CITRUSLEAF_EPOCH_SECS);
    let ttl = record.void_time.checked_sub(u32::try_from(written_secs).ok()?)?;
    let remaining = record.void_time.saturating_sub(now_secs);
    (u64::from(remaining) * 100 < u64::from(percent) * u64::from(ttl)).then_some(ttl)
}

/// The tombstone a delete leaves, or `KEY_NOT_FOUND` when there is nothing to delete.
pub fn delete(msg: &Msg, existing: Option<&Record>, ctx: &Context) -> Result<Record, u8> {
    let live = existing.filter(|r| r.visible(ctx.now_secs)).ok_or(result::KEY_NOT_FOUND)?;
    if !generation_admits(msg, Some(live)) {
        return Err(result::GENERATION_ERROR);
    }
    Ok(live.tombstone_after(ctx.site_id, ctx.now_ms))
}

/// The bins a read answers with: all (GET_ALL), none (header only), or the named ones.
pub fn read(msg: &Msg, record: &Record) -> Vec<Op> {
    if msg.info1 & info1::NOBINDATA != 0 {
        return Vec::new();
    }
    if msg.info1 & info1::GET_ALL != 0 || msg.ops.is_empty() {
        return record.bins.iter().map(bin_op).collect();
    }
    if msg.info2 & info2::RESPOND_ALL_OPS != 0 {
        return msg
            .ops
            .iter()
            .map(|o| {
                if o.kind == op::READ { read_op(record, o) } else { None }
                    .unwrap_or_else(|| null_op(o))
            })
            .collect();
    }
    msg.ops.iter().filter(|o| o.kind == op::READ).flat_map(|o| read_op(record, o)).collect()
}

fn read_op(record: &Record, operation: &Op) -> Option<Op> {
    record.bin(&operation.name).map(bin_op)
}

/// A result op that only fills a position: the op's bin name (empty for touch, delete and header
/// reads) with a NULL value.
fn null_op(operation: &Op) -> Op {
    Op {
        kind: operation.kind,
        particle: particle::NULL,
        name: operation.name.clone(),
        value: Bytes::new(),
    }
}

/// A bin as a reply op.
pub fn bin_op(bin: &Bin) -> Op {
    Op {
        kind: op::READ,
        particle: bin.value.particle,
        name: bin.name.clone(),
        value: bin.value.data.clone(),
    }
}

fn increment(current: Option<&Bin>, operation: &Op) -> Result<Value, u8> {
    let delta = Value { particle: operation.particle, data: operation.value.clone() };
    match (current.map(|b| &b.value), delta.particle) {
        (None, particle::INTEGER) => delta.as_integer().map(Value::integer),
        (None, particle::FLOAT) => delta.as_float().map(Value::float),
        (Some(value), particle::INTEGER) => value
            .as_integer()
            .zip(delta.as_integer())
            .map(|(a, b)| Value::integer(a.wrapping_add(b))),
        (Some(value), particle::FLOAT) => {
            value.as_float().zip(delta.as_float()).map(|(a, b)| Value::float(a + b))
        }
        _ => return Err(result::PARAMETER_ERROR),
    }
    .ok_or(result::BIN_TYPE_ERROR)
}

fn concatenate(current: Option<&Bin>, operation: &Op) -> Result<Value, u8> {
    if !matches!(operation.particle, particle::STRING | particle::BLOB) {
        return Err(result::PARAMETER_ERROR);
    }
    let Some(current) = current else {
        return Ok(Value { particle: operation.particle, data: operation.value.clone() });
    };
    if current.value.particle != operation.particle {
        return Err(result::BIN_TYPE_ERROR);
    }
    let (first, second) = if operation.kind == op::APPEND {
        (&current.value.data, &operation.value)
    } else {
        (&operation.value, &current.value.data)
    };
    let mut joined = Vec::with_capacity(first.len() + second.len());
    joined.extend_from_slice(first);
    joined.extend_from_slice(second);
    Ok(Value { particle: operation.particle, data: joined.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: Context = Context {
        now_ms: 10_000,
        now_secs: 100,
        default_ttl: 0,
        site_id: 1,
        max_record_size: 1 << 20,
    };

    fn put(bins: &[(&str, Value)]) -> Msg {
        Msg {
            info2: info2::WRITE,
            ops: bins
                .iter()
                .map(|(name, value)| Op {
                    kind: op::WRITE,
                    particle: value.particle,
                    name: (*name).into(),
                    value: value.data.clone(),
                })
                .collect(),
            ..Msg::default()
        }
    }

    fn string(s: &str) -> Value {
        Value { particle: particle::STRING, data: Bytes::copy_from_slice(s.as_bytes()) }
    }

    #[test]
    fn put_creates_then_updates_with_generation_and_lut() {
        let first = write(&put(&[("a", Value::integer(1))]), "s", None, None, &CTX).expect("put");
        assert_eq!(first.record.generation, 1);
        assert_eq!(first.record.last_update_ms, 10_000);
        let second = write(&put(&[("b", string("x"))]), "s", None, Some(&first.record), &CTX)
            .expect("update");
        assert_eq!(second.record.generation, 2);
        assert_eq!(second.record.last_update_ms, 10_001, "LUT moves forward even in the same ms");
        assert_eq!(second.record.bins.len(), 2, "update merges bins");
    }

    #[test]
    fn writes_over_aerospikes_limits_are_refused_with_its_result_codes() {
        let blob = |len: usize| Value { particle: particle::BLOB, data: vec![0u8; len].into() };
        let small = CTX.max_record_size as usize / 2;
        let cases = [
            ("s".repeat(64), "v".to_owned(), small, result::PARAMETER_ERROR),
            ("s".repeat(63), "v".repeat(16), 1, result::BIN_NAME_TOO_LONG),
            ("s".to_owned(), "v".to_owned(), CTX.max_record_size as usize, result::RECORD_TOO_BIG),
        ];
        for (set, bin, len, code) in cases {
            let request = put(&[(bin.as_str(), blob(len))]);
            let outcome = write(&request, &set, None, None, &CTX).map(|_| ());
            let expected = Err(code);
            assert_eq!(outcome, expected, "set of {}, bin '{bin}', {len} B", set.len());
        }
        let at_limits = put(&[(&"v".repeat(15), blob(small))]);
        assert!(write(&at_limits, &"s".repeat(63), None, None, &CTX).is_ok());
    }

    #[test]
    fn record_exists_actions() {
        let existing =
            write(&put(&[("a", Value::integer(1))]), "s", None, None, &CTX).expect("put").record;
        let mut create = put(&[("a", Value::integer(2))]);
        create.info2 |= info2::CREATE_ONLY;
        assert_eq!(write(&create, "s", None, Some(&existing), &CTX), Err(result::KEY_EXISTS));
        let mut update_only = put(&[("a", Value::integer(2))]);
        update_only.info3 |= info3::UPDATE_ONLY;
        assert_eq!(write(&update_only, "s", None, None, &CTX), Err(result::KEY_NOT_FOUND));
        let mut replace = put(&[("b", Value::integer(2))]);
        replace.info3 |= info3::REPLACE_ONLY;
        let replaced = write(&replace, "s", None, Some(&existing), &CTX).expect("replace");
        assert!(replaced.record.bin("a").is_none());
        assert_eq!(replaced.record.generation, 2);
    }

    #[test]
    fn generation_policies() {
        let existing =
            write(&put(&[("a", Value::integer(1))]), "s", None, None, &CTX).expect("put").record;
        let mut equal = put(&[("a", Value::integer(2))]);
        equal.info2 |= info2::GENERATION;
        equal.generation = 2;
        assert_eq!(write(&equal, "s", None, Some(&existing), &CTX), Err(result::GENERATION_ERROR));
        equal.generation = 1;
        assert!(write(&equal, "s", None, Some(&existing), &CTX).is_ok());
        let mut greater = put(&[("a", Value::integer(2))]);
        greater.info2 |= info2::GENERATION_GT;
        greater.generation = 1;
        assert_eq!(
            write(&greater, "s", None, Some(&existing), &CTX),
            Err(result::GENERATION_ERROR)
        );
        greater.generation = 5;
        assert!(write(&greater, "s", None, Some(&existing), &CTX).is_ok());
    }

    #[test]
    fn ttl_semantics() {
        let ctx = Context { default_ttl: 50, ..CTX };
        let mut msg = put(&[("a", Value::integer(1))]);
        assert_eq!(write(&msg, "s", None, None, &ctx).expect("put").record.void_time, 150);
        msg.record_ttl = TTL_NEVER;
        assert_eq!(write(&msg, "s", None, None, &ctx).expect("put").record.void_time, 0);
        msg.record_ttl = 10;
        let existing = write(&msg, "s", None, None, &ctx).expect("put").record;
        assert_eq!(existing.void_time, 110);
        msg.record_ttl = TTL_DONT_UPDATE;
        assert_eq!(
            write(&msg, "s", None, Some(&existing), &ctx).expect("put").record.void_time,
            110
        );
    }

    #[test]
    fn a_read_late_in_a_records_life_asks_for_a_touch_with_its_last_ttl() {
        let now_ms = (CITRUSLEAF_EPOCH_SECS + 1_000) * 1000;
        let written = 1_000;
        let record = Record {
            last_update_ms: now_ms,
            void_time: written as u32 + 10,
            ..write(&put(&[("a", Value::integer(1))]), "s", None, None, &CTX).expect("put").record
        };
        let at = |secs: u64| written as u32 + secs as u32;
        assert_eq!(read_touch_ttl(80, &record, at(1)), None, "9 of 10 s left");
        assert_eq!(read_touch_ttl(80, &record, at(3)), Some(10), "7 of 10 s left");
        assert_eq!(read_touch_ttl(0, &record, at(9)), None, "the namespace default: off");
        assert_eq!(read_touch_ttl(u32::MAX, &record, at(9)), None, "never reset");
        let forever = Record { void_time: 0, ..record };
        assert_eq!(read_touch_ttl(80, &forever, at(9)), None);
    }

    #[test]
    fn a_write_that_leaves_no_bins_deletes_the_record() {
        let nothing = Value { particle: particle::NULL, data: Bytes::new() };
        let existing =
            write(&put(&[("a", Value::integer(1))]), "s", None, None, &CTX).expect("put").record;
        let emptied = write(&put(&[("a", nothing.clone())]), "s", None, Some(&existing), &CTX)
            .expect("write");
        assert!(emptied.record.tombstone, "{:?}", emptied.record);
        assert_eq!(emptied.record.generation, existing.generation + 1);
        let absent = write(&put(&[("a", nothing)]), "s", None, None, &CTX);
        assert_eq!(absent.map(|o| o.record), Err(result::KEY_NOT_FOUND));
    }

    #[test]
    fn increment_append_prepend_and_type_errors() {
        let existing = write(
            &put(&[("n", Value::integer(5)), ("f", Value::float(1.5)), ("s", string("mid"))]),
            "s",
            None,
            None,
            &CTX,
        )
        .expect("put")
        .record;
        let ops = vec![
            Op {
                kind: op::INCR,
                particle: particle::INTEGER,
                name: "n".into(),
                value: Value::integer(3).data,
            },
            Op {
                kind: op::INCR,
                particle: particle::FLOAT,
                name: "f".into(),
                value: Value::float(1.0).data,
            },
            Op {
                kind: op::APPEND,
                particle: particle::STRING,
                name: "s".into(),
                value: "-end".into(),
            },
            Op {
                kind: op::PREPEND,
                particle: particle::STRING,
                name: "s".into(),
                value: "start-".into(),
            },
            Op { kind: op::READ, particle: 0, name: "n".into(), value: Bytes::new() },
        ];
        let msg = Msg { info2: info2::WRITE, ops, ..Msg::default() };
        let out = write(&msg, "s", None, Some(&existing), &CTX).expect("operate");
        assert_eq!(out.record.bin("n").and_then(|b| b.value.as_integer()), Some(8));
        assert_eq!(out.record.bin("f").and_then(|b| b.value.as_float()), Some(2.5));
        assert_eq!(out.record.bin("s").map(|b| b.value.data.clone()), Some("start-mid-end".into()));
        assert_eq!(out.reply_ops.len(), 1);
        assert_eq!(out.reply_ops[0].value, Value::integer(8).data);

        let bad = Msg {
            info2: info2::WRITE,
            ops: vec![Op {
                kind: op::INCR,
                particle: particle::INTEGER,
                name: "s".into(),
                value: Value::integer(1).data,
            }],
            ..Msg::default()
        };
        assert_eq!(write(&bad, "s", None, Some(&existing), &CTX), Err(result::BIN_TYPE_ERROR));
        let cdt = Msg {
            info2: info2::WRITE,
            ops: vec![Op {
                kind: op::CDT_MODIFY,
                particle: 0,
                name: "l".into(),
                value: Bytes::new(),
            }],
            ..Msg::default()
        };
        assert_eq!(write(&cdt, "s", None, Some(&existing), &CTX), Err(result::UNSUPPORTED_FEATURE));
    }

    #[test]
    fn delete_leaves_a_tombstone_that_a_later_write_outranks() {
        let existing =
            write(&put(&[("a", Value::integer(1))]), "s", None, None, &CTX).expect("put").record;
        let tombstone = delete(&Msg::default(), Some(&existing), &CTX).expect("delete");
        assert!(tombstone.tombstone);
        assert_eq!(tombstone.generation, 2);
        assert_eq!(delete(&Msg::default(), Some(&tombstone), &CTX), Err(result::KEY_NOT_FOUND));
        let reborn = write(&put(&[("a", Value::integer(2))]), "s", None, Some(&tombstone), &CTX)
            .expect("write after delete");
        // Generation 1 again, as in Aerospike, in a later incarnation than the tombstone's.
        assert_eq!(reborn.record.generation, 1);
        assert!(reborn.record.last_update_ms > tombstone.last_update_ms);
        assert_eq!(reborn.record.created_ms, reborn.record.last_update_ms);
        assert!(reborn.record.created_ms > tombstone.created_ms);
    }

    #[test]
    fn respond_all_ops_answers_once_per_op_in_order() {
        let ops = vec![
            Op {
                kind: op::WRITE,
                particle: particle::INTEGER,
                name: "a".into(),
                value: Value::integer(1).data,
            },
            Op { kind: op::READ, particle: 0, name: "a".into(), value: Bytes::new() },
            Op { kind: op::READ, particle: 0, name: "missing".into(), value: Bytes::new() },
            Op { kind: op::TOUCH, particle: 0, name: String::new(), value: Bytes::new() },
        ];
        let msg = Msg { info2: info2::WRITE | info2::RESPOND_ALL_OPS, ops, ..Msg::default() };
        let out = write(&msg, "s", None, None, &CTX).expect("operate");
        let names: Vec<&str> = out.reply_ops.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["a", "a", "missing", ""]);
        let particles: Vec<u8> = out.reply_ops.iter().map(|o| o.particle).collect();
        assert_eq!(particles, [particle::NULL, particle::INTEGER, particle::NULL, particle::NULL]);
    }

    #[test]
    fn touch_needs_a_record() {
        assert_eq!(write(&touch_request(0), "s", None, None, &CTX), Err(result::KEY_NOT_FOUND));
    }

    #[test]
    fn reads_pick_bins() {
        let record =
            write(&put(&[("a", Value::integer(1)), ("b", string("x"))]), "s", None, None, &CTX)
                .expect("put")
                .record;
        let all = Msg { info1: info1::READ | info1::GET_ALL, ..Msg::default() };
        assert_eq!(read(&all, &record).len(), 2);
        let header = Msg { info1: info1::READ | info1::NOBINDATA, ..Msg::default() };
        assert!(read(&header, &record).is_empty());
        let named = Msg {
            info1: info1::READ,
            ops: vec![Op { kind: op::READ, particle: 0, name: "b".into(), value: Bytes::new() }],
            ..Msg::default()
        };
        assert_eq!(read(&named, &record).len(), 1);
    }
}

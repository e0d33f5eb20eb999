//! Commands a node runs for clients: classification of an AS_MSG, single-record reads and
//! writes against storage ([`ops`] holds their pure meaning), batch reads ([`batch`]) and
//! partition scans ([`scan`]).

pub mod batch;
pub mod ops;
pub mod scan;

use bytes::Bytes;
use ferry_topology::placement::partition_of;

pub use self::ops::result;
use crate::crash::CrashPoint;
use crate::node::{NodeState, Stats};
use crate::proto::msg::{Msg, Op, field, info1, info2, info3};
use crate::proto::{self, TYPE_MSG};
use crate::record::{self, MAX_SET_NAME, Record};
use crate::security::Caller;
use crate::security::db::Permission;
use crate::server::{Origin, ReplySink};
use crate::storage::Digest;

/// Sends what is buffered and the LAST message of a multi-record reply (batch, scan), which
/// carries the reply-wide result code.
pub(crate) async fn send_last<W: tokio::io::AsyncWrite + Unpin>(
    out: &mut ReplySink<'_, W>,
    mut buffer: Vec<u8>,
    code: u8,
) -> std::io::Result<()> {
    Msg { info3: info3::LAST, result_code: code, ..Msg::default() }.encode_into(&mut buffer);
    out.send(&buffer).await
}

/// A reply carrying only a result code.
pub fn error_reply(code: u8) -> Msg {
    Msg { result_code: code, ..Msg::default() }
}

/// Runs one AS_MSG and writes its reply (or reply stream) to `out`.
pub async fn execute<W: tokio::io::AsyncWrite + Unpin>(
    state: &NodeState,
    msg: Msg,
    raw_body: &[u8],
    (origin, caller): (Origin, Option<&Caller>),
    out: &mut ReplySink<'_, W>,
) -> std::io::Result<()> {
    // A node joining a running site serves nothing until it knows the site's partition map.
    if !state.map_known().await {
        return out.send(&error_reply(result::PARTITION_UNAVAILABLE).encode()).await;
    }
    if msg.info1 & info1::BATCH != 0 {
        // Each row is authorized as the single-record command it stands for.
        return batch::execute(state, &msg, (origin, caller), out).await;
    }
    if let Err(code) = authorize(state, caller, &msg) {
        return out.send(&error_reply(code).encode()).await;
    }
    if msg.field(field::PID_ARRAY).is_some()
        || msg.field(field::DIGEST_ARRAY).is_some()
        || (msg.field(field::DIGEST).is_none() && msg.field(field::NAMESPACE).is_some())
    {
        return scan::execute(state, &msg, out).await;
    }
    let reply = match route(state, &msg, origin) {
        Route::Local(request) => run_single(state, &msg, &request).await,
        Route::Forward(peer) => {
            let framed = proto::frame(TYPE_MSG, raw_body);
            match state.forward(peer, &framed).await {
                Ok(reply) => return out.send_framed(&reply).await,
                Err(error) => {
                    tracing::warn!(%error, "forward to partition owner failed");
                    error_reply(result::TIMEOUT)
                }
            }
        }
        Route::Refuse(code) => error_reply(code),
    };
    if reply.result_code != result::OK && reply.result_code != result::KEY_NOT_FOUND {
        Stats::bump(&state.stats.errors);
    }
    out.send(&reply.encode()).await
}

/// Whether `caller` (a client; `None` for a peer of the site) may run `msg`, a single-record
/// command or a scan: reading needs a read privilege on its namespace and set, writing (or
/// deleting) a write privilege. `Err` carries the result code (80 or 81) when security is on.
pub(crate) fn authorize(state: &NodeState, caller: Option<&Caller>, msg: &Msg) -> Result<(), u8> {
    let Some(caller) = caller.filter(|_| state.security.enabled()) else { return Ok(()) };
    let namespace = msg.field_str(field::NAMESPACE).ok().flatten().unwrap_or_default();
    let set = msg.field_str(field::SET).ok().flatten().unwrap_or_default();
    let writes = msg.info2 & (info2::WRITE | info2::DELETE) != 0;
    if writes {
        state.security.check(caller, Permission::Write, namespace, set)?;
    }
    if !writes || msg.info1 & (info1::READ | info1::GET_ALL) != 0 {
        state.security.check(caller, Permission::Read, namespace, set)?;
    }
    Ok(())
}

/// What a single-record request names.
#[derive(Debug, Clone)]
pub struct Target {
    pub namespace: String,
    pub set: String,
    pub digest: Digest,
    pub key: Option<Bytes>,
}

enum Route {
    Local(Target),
    Forward(std::net::SocketAddr),
    Refuse(u8),
}

fn route(state: &NodeState, msg: &Msg, origin: Origin) -> Route {
    if [field::FILTER_EXP, field::UDF_PACKAGE_NAME, field::UDF_FUNCTION, field::UDF_OP]
        .iter()
        .any(|&kind| msg.field(kind).is_some())
    {
        return Route::Refuse(result::UNSUPPORTED_FEATURE);
    }
    let target = match target(msg) {
        Ok(target) => target,
        Err(code) => return Route::Refuse(code),
    };
    if state.namespace(&target.namespace).is_none() {
        return Route::Refuse(result::INVALID_NAMESPACE);
    }
    let partition = partition_of(&target.digest);
    let view = state.cluster();
    if view.is_master(&target.namespace, partition) {
        return Route::Local(target);
    }
    // A read sent to a full copy (a client's replica policy: sequence, prefer-rack) is served
    // there: every acknowledged write reached every full copy.
    let me = &state.this_node().id;
    if msg.info2 & info2::WRITE == 0
        && view.copies(&target.namespace, partition).is_some_and(|c| c.full.contains(me))
    {
        return Route::Local(target);
    }
    match (origin, view.master(&target.namespace, partition)) {
        (Origin::Client, Some(owner)) => Route::Forward(state.fabric_addr(owner)),
        // Forwarded by a peer whose map is not this node's: the client retries once maps agree.
        _ => Route::Refuse(result::PARTITION_UNAVAILABLE),
    }
}

/// The namespace, set, digest and key a request names.
pub fn target(msg: &Msg) -> Result<Target, u8> {
    let text = |kind| msg.field_str(kind).map_err(|_| result::PARAMETER_ERROR);
    let namespace = text(field::NAMESPACE)?.ok_or(result::PARAMETER_ERROR)?.to_owned();
    let set = text(field::SET)?.unwrap_or_default().to_owned();
    if set.len() > MAX_SET_NAME {
        return Err(result::PARAMETER_ERROR);
    }
    let digest: Digest = msg
        .field(field::DIGEST)
        .and_then(|f| f.data.as_ref().try_into().ok())
        .ok_or(result::PARAMETER_ERROR)?;
    let key = msg.field(field::KEY).map(|f| f.data.clone());
    Ok(Target { namespace, set, digest, key })
}

/// The clock and settings for a command on a namespace.
fn context(state: &NodeState, namespace: &str) -> ops::Context {
    ops::Context {
        now_ms: record::now_ms(),
        now_secs: record::now_citrusleaf_secs(),
        default_ttl: state.namespace(namespace).map_or(0, |ns| ns.default_ttl),
        site_id: state.site_id(),
        max_record_size: state.namespace(namespace).map_or(u32::MAX, |ns| ns.max_record_size),
    }
}

/// A successful reply for a record.
fn record_reply(record: &Record, ops: Vec<crate::proto::msg::Op>) -> Msg {
    Msg {
        generation: u32::from(record.generation),
        record_ttl: record.void_time,
        ops,
        ..Msg::default()
    }
}

/// Runs a single-record command on this node's storage.
pub async fn run_single(state: &NodeState, msg: &Msg, target: &Target) -> Msg {
    match run_single_inner(state, msg, target).await {
        Ok(reply) => reply,
        Err(code) => error_reply(code),
    }
}

async fn run_single_inner(state: &NodeState, msg: &Msg, target: &Target) -> Result<Msg, u8> {
    let ns = target.namespace.as_str();
    let ctx = context(state, ns);
    if msg.info2 & info2::WRITE != 0 {
        let (record, reply_ops) = write(state, msg, target, ctx).await?;
        return Ok(record_reply(&record, reply_ops));
    }
    Stats::bump(&state.stats.reads);
    let record = state.store.get(ns, &target.digest).map_err(|e| storage_error(ns, e))?;
    same_set(state, target, record.as_ref())?;
    let mut record = record.filter(|r| r.visible(ctx.now_secs)).ok_or(result::KEY_NOT_FOUND)?;
    if let Some(ttl) = ops::read_touch_ttl(msg.record_ttl, &record, ctx.now_secs) {
        // Aerospike's read-touch-ttl-percent: a read late in the record's life touches it,
        // which is a write like any other (logged, shipped). A refused touch leaves the read.
        if let Ok((touched, _)) = write(state, &ops::touch_request(ttl), target, ctx).await {
            record = touched;
        }
    }
    Ok(record_reply(&record, ops::read(msg, &record)))
}

/// With security on, a request reaches only records of the set it names: privileges are held
/// per set, and a digest (anyone can compute one) would otherwise reach another set's record.
fn same_set(state: &NodeState, target: &Target, record: Option<&Record>) -> Result<(), u8> {
    let elsewhere = record.is_some_and(|r| r.set != target.set);
    if state.security.enabled() && !target.set.is_empty() && elsewhere {
        return Err(result::PARAMETER_ERROR);
    }
    Ok(())
}

fn storage_error(ns: &str, error: crate::storage::StoreError) -> u8 {
    tracing::error!(%error, namespace = ns, "storage failure");
    result::SERVER_ERROR
}

/// Runs a write command (put, operate, touch, delete); returns the stored version and the
/// operations' results once it is durable under the namespace's commit mode.
async fn write(
    state: &NodeState,
    msg: &Msg,
    target: &Target,
    ctx: ops::Context,
) -> Result<(Record, Vec<Op>), u8> {
    let ns = target.namespace.as_str();
    let store = &state.store;
    let storage_error = |error| storage_error(ns, error);
    // A master cut off from its site's majority acknowledges nothing (its partitions are
    // about to be taken over).
    if !state.write_lease().await {
        return Err(result::PARTITION_UNAVAILABLE);
    }
    // Stamped after the wait: the LUT is the time the write happens here.
    let ctx =
        ops::Context { now_ms: record::now_ms(), now_secs: record::now_citrusleaf_secs(), ..ctx };
    // In flight until durable: a node reports a new fence applied only once this is done.
    let Some(_admitted) = state.fence.admit_client() else {
        return Err(result::FORBIDDEN);
    };
    // A write after a truncation is stamped at or after its cut-off, so it outlives it.
    let ctx =
        ops::Context { now_ms: ctx.now_ms.max(store.truncation_cutoff(ns, &target.set)), ..ctx };
    let outcome = {
        let _guard = store.lock(&target.digest).await;
        store.writable().map_err(storage_error)?;
        let existing = store.get(ns, &target.digest).map_err(storage_error)?;
        same_set(state, target, existing.as_ref())?;
        let mut outcome = if msg.info2 & info2::DELETE != 0 {
            Stats::bump(&state.stats.deletes);
            (ops::delete(msg, existing.as_ref(), &ctx)?, Vec::new())
        } else {
            Stats::bump(&state.stats.writes);
            let out = ops::write(msg, &target.set, target.key.as_ref(), existing.as_ref(), &ctx)?;
            (out.record, out.reply_ops)
        };
        // Logged, then stored with its position, under the record's lock: storage's journal
        // makes both durable (the node relogs what the log lost in a crash), and a shipper
        // reading the entry takes the lock, so it finds this version.
        outcome.0.logged_lsn =
            state.log_change(ns, &target.digest, &outcome.0).map_err(|error| {
                tracing::error!(%error, "digest log append failed; write refused");
                result::SERVER_ERROR
            })?;
        store.put(ns, &target.digest, &outcome.0).map_err(storage_error)?;
        outcome
    };
    if state.crash_at == Some(CrashPoint::WriteBeforeReplicate) && store.commit(ns).await.is_ok() {
        crate::crash::now(CrashPoint::WriteBeforeReplicate);
    }
    let (committed, replicated) =
        tokio::join!(store.commit(ns), state.replicate(ns, &target.digest, &outcome.0));
    committed.map_err(storage_error)?;
    replicated.map_err(|error| {
        tracing::warn!(%error, "write not on every copy; not acknowledged");
        match error {
            crate::replica::ReplicationError::Unavailable { .. } => result::TIMEOUT,
            _ => result::PARTITION_UNAVAILABLE,
        }
    })?;
    state.log_healthy().map_err(|error| {
        tracing::error!(%error, "digest log poisoned; a stored write is not acknowledged");
        result::SERVER_ERROR
    })?;
    if !state.lease_holds() {
        // The lease ran out while the write was stored: another node may master the
        // partition now, so this one is not acknowledged (it stays in doubt, like a timeout).
        return Err(result::PARTITION_UNAVAILABLE);
    }
    Ok(outcome)
}

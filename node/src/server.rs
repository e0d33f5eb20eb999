//! The node's network shell: accepts client and fabric connections, reads frames, hands them to
//! the command layer and writes the replies. Embeddable: [`run`] takes bound listeners and a
//! shutdown future, so tests run nodes on port 0.
//!
//! Clients and peers share one protocol. A request arriving on the **fabric** listener was
//! forwarded by a peer that does not own the partition; it is executed here and never forwarded
//! again, so a stale map cannot make two nodes bounce a request between them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::command;
use crate::node::NodeState;
use crate::proto::msg::{Msg, info1};
use crate::proto::{
    self, FrameError, ProtoHeader, TYPE_ADMIN, TYPE_COMPRESSED, TYPE_FABRIC, TYPE_INFO, TYPE_MSG,
};
use crate::security::Caller;

/// Longest wait for the rest of a frame once its header arrived; a client that stalls mid-frame
/// is disconnected instead of holding a task forever.
const FRAME_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Replies larger than this are compressed when the client asks for compressed replies.
const COMPRESS_THRESHOLD: usize = 128;

/// Most connections one listener serves at once (Aerospike's `proto-fd-max` defaults to
/// 15 000); a connection past it is closed at once.
const MAX_CONNECTIONS: usize = 10_000;

/// Request bytes, compressed and inflated, that all connections of a node may hold at once, in
/// KiB. A connection waits for its share before it allocates a body, so many connections
/// sending large (or small compressed, large inflated) frames cannot exhaust memory; one
/// request of the largest size (64 MiB, and 64 MiB inflated) always fits.
const BODY_BUDGET_KIB: usize = 256 << 10;

/// The share of `budget` that `bytes` take, in whole KiB: at once when it is free, so a small
/// request does not queue behind a large one waiting for room; else in turn.
async fn take_share(
    budget: &Semaphore,
    bytes: u64,
) -> Result<tokio::sync::SemaphorePermit<'_>, tokio::sync::AcquireError> {
    let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
    match budget.try_acquire_many(kib) {
        Ok(share) => Ok(share),
        Err(_) => budget.acquire_many(kib).await,
    }
}

/// Where a connection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An Aerospike client: requests for partitions owned elsewhere are forwarded.
    Client,
    /// A peer node forwarding a request: always executed here.
    Fabric,
}

/// Serves clients on `client` and peers on `fabric` until `shutdown` resolves, then stops
/// accepting and lets in-flight requests finish.
pub async fn run(
    state: Arc<NodeState>,
    client: TcpListener,
    fabric: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopped) = watch::channel(false);
    let budget = Arc::new(Semaphore::new(BODY_BUDGET_KIB));
    let accept_client = tokio::spawn(accept(
        state.clone(),
        client,
        Origin::Client,
        budget.clone(),
        stopped.clone(),
    ));
    let accept_fabric = tokio::spawn(accept(state, fabric, Origin::Fabric, budget, stopped));
    shutdown.await;
    stop.send_replace(true);
    for task in [accept_client, accept_fabric] {
        task.await.map_err(std::io::Error::other)?;
    }
    Ok(())
}

async fn accept(
    state: Arc<NodeState>,
    listener: TcpListener,
    origin: Origin,
    budget: Arc<Semaphore>,
    stopped: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let mut stop = stopped.clone();
    loop {
        tokio::select! {
            () = stopping(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= MAX_CONNECTIONS {
                        tracing::warn!(%peer, MAX_CONNECTIONS, "too many connections; closing a new one");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let (state, budget, stopped) = (state.clone(), budget.clone(), stopped.clone());
                    connections.spawn(async move {
                        if let Err(error) = serve(state, stream, origin, budget, stopped).await {
                            tracing::debug!(%peer, %error, "connection closed");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Idle connections end at once; busy ones finish the request they are on.
    while connections.join_next().await.is_some() {}
}

/// Resolves once shutdown has begun.
async fn stopping(stopped: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, before any other await.
    let _ = stopped.wait_for(|s| *s).await;
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("client stalled mid-frame")]
    Stalled,
    #[error("the request budget is closed")]
    Budget(#[from] tokio::sync::AcquireError),
}

async fn serve(
    state: Arc<NodeState>,
    stream: TcpStream,
    origin: Origin,
    budget: Arc<Semaphore>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), ConnectionError> {
    let peer = stream.peer_addr().ok();
    // Who the client logged in as (security checks apply to client connections; a request a
    // peer of the site forwards over the fabric was checked where the client sent it).
    let mut caller = Caller::new(peer);
    let (read, write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut writer = BufWriter::new(write);
    loop {
        let mut header = [0u8; 8];
        tokio::select! {
            () = stopping(&mut stopped) => return Ok(()),
            read = reader.read_exact(&mut header) => match read {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e.into()),
            },
        }
        let header = ProtoHeader::parse(header)?;
        // Held until the request is answered: the bytes it stands for are in use until then.
        let _body_share = take_share(&budget, header.size).await?;
        let mut body = vec![0u8; header.size as usize];
        tokio::time::timeout(FRAME_BODY_TIMEOUT, reader.read_exact(&mut body))
            .await
            .map_err(|_| ConnectionError::Stalled)??;
        let mut _inflated_share = None;
        let (header, body) = if header.kind == TYPE_COMPRESSED {
            let declared = body.first_chunk::<8>().map_or(0, |size| u64::from_be_bytes(*size));
            let declared = declared.min(proto::MAX_BODY + 8);
            _inflated_share = Some(take_share(&budget, declared).await?);
            proto::decompress(&body)?
        } else {
            (header, body.into())
        };
        match header.kind {
            // Logins belong on the client port.
            TYPE_ADMIN if origin == Origin::Client => {
                // Logins and user administration (answered "security not enabled" when the
                // site has it off, as Aerospike does). A malformed message closes the
                // connection.
                let request = proto::admin::AdminRequest::decode(&body)?;
                let reply = state.security.admin(&mut caller, &request).await;
                writer.write_all(&proto::frame(TYPE_ADMIN, &reply)).await?;
            }
            TYPE_INFO => {
                let names: Vec<String> =
                    proto::info::parse_request(&body)?.into_iter().map(str::to_owned).collect();
                // Some answers scan the store (`verify-digest`, `xdr-parked`): the blocking pool
                // runs them, never a runtime worker.
                let state = Arc::clone(&state);
                let asking = (origin == Origin::Client).then(|| caller.clone());
                let reply = tokio::task::spawn_blocking(move || {
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    crate::info::answer(&state, &names, asking.as_ref())
                })
                .await
                .map_err(|e| std::io::Error::other(format!("info task failed: {e}")))?;
                writer.write_all(&proto::frame(TYPE_INFO, &reply)).await?;
            }
            TYPE_MSG => {
                let msg = match Msg::decode(&body) {
                    Ok(msg) => msg,
                    Err(error) => {
                        // Answer what we could not read with a parameter error, then close:
                        // the stream position can no longer be trusted.
                        let reply = command::error_reply(command::result::PARAMETER_ERROR);
                        writer.write_all(&proto::frame(TYPE_MSG, &reply.encode())).await?;
                        writer.flush().await?;
                        return Err(error.into());
                    }
                };
                let compress = msg.info1 & info1::COMPRESS_RESPONSE != 0;
                let mut out = ReplySink { writer: &mut writer, compress };
                let asking = (origin == Origin::Client).then_some(&caller);
                command::execute(&state, msg, &body, (origin, asking), &mut out).await?;
            }
            // The site's own traffic: never from a client.
            TYPE_FABRIC if origin == Origin::Fabric => {
                writer.write_all(&crate::fabric::serve(&state, &body).await).await?;
            }
            _ => return Err(FrameError::Kind(header.kind).into()),
        }
        writer.flush().await?;
    }
}

/// Where commands write their reply frames.
#[derive(Debug)]
pub struct ReplySink<'a, W> {
    writer: &'a mut W,
    compress: bool,
}

impl<W: tokio::io::AsyncWrite + Unpin> ReplySink<'_, W> {
    /// Writes one proto frame of AS_MSG bodies (compressed when the client asked and it pays).
    pub async fn send(&mut self, bodies: &[u8]) -> std::io::Result<()> {
        let framed = proto::frame(TYPE_MSG, bodies);
        if self.compress && framed.len() > COMPRESS_THRESHOLD {
            self.writer.write_all(&proto::compress(&framed)).await
        } else {
            self.writer.write_all(&framed).await
        }
    }

    /// Writes an already framed reply (from a peer) through unchanged.
    pub async fn send_framed(&mut self, framed: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(framed).await
    }

    /// Pushes buffered frames to the socket (between batches of a long stream).
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush().await
    }
}

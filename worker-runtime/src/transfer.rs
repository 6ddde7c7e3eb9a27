//! KV handoff from a prefill worker to a decode worker.
//!
//! The decode worker connects to the prefill worker's KV port (TCP) and sends one JSON
//! line: `{"op":"facts"}` (where are you?) or `{"op":"prefill", prompt, max_new, layout,
//! transport}`. The prefill worker answers one JSON line — for a prefill: the first
//! token, the token count, the layout and the byte count, or an error — and then moves
//! the KV bytes with the chosen [`KvTransport`]:
//! - [`Tcp`]: the bytes follow on the same connection (between nodes);
//! - [`SharedMemory`]: the bytes are written to a file in a shared-memory directory
//!   (`/dev/shm`, or a memory-backed `emptyDir` two containers share) and only its name
//!   is sent; chosen only where the decode worker sees the prefill worker's marker file in
//!   its own directory, i.e. they really share that memory.
//!
//! NVLink (CUDA IPC within a ComputeDomain) and RDMA (NIXL/UCX) are further
//! implementations of the same trait; they need GPUs and are not built here.
//!
//! Every failure is an error for the one request: a dropped connection or a peer that
//! dies mid-transfer ("dropped after N of M bytes"), a layout mismatch (different model
//! shape), a prompt too long for the model. Both workers keep serving.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::kv::{KvCache, KvLayout};
use crate::model::Model;
use crate::verify::Facts;

/// How long one transfer step may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a KV handoff failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer could not be reached or the connection broke.
    #[error("KV peer {peer}: {what}")]
    Io {
        /// `host:port`.
        peer: String,
        /// What happened.
        what: String,
    },
    /// The transfer ended early.
    #[error("KV transfer from {peer} dropped after {got} of {want} bytes")]
    Dropped {
        /// `host:port`.
        peer: String,
        /// Bytes received.
        got: usize,
        /// Bytes announced.
        want: usize,
    },
    /// The peer refused the request (layout, length, …).
    #[error("KV peer {peer} refused: {reason}")]
    Refused {
        /// `host:port`.
        peer: String,
        /// Its reason.
        reason: String,
    },
}

/// One way of moving KV bytes after the header.
pub trait KvTransport: Send + Sync {
    /// `tcp`, `shm`.
    fn name(&self) -> &'static str;
    /// Prefill side: makes `bytes` available to the peer; returns what the header must
    /// carry (e.g. a file name) and then writes anything that follows the header.
    fn stage(&self, bytes: &[u8]) -> std::io::Result<Option<String>>;
    /// Prefill side, after the header: sends what follows it.
    fn send<'a>(&'a self, stream: &'a mut TcpStream, bytes: &'a [u8]) -> BoxFuture<'a, std::io::Result<()>>;
    /// Decode side: reads `want` bytes announced with `staged`.
    fn receive<'a>(
        &'a self,
        stream: &'a mut BufReader<TcpStream>,
        staged: Option<&'a str>,
        want: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, (usize, String)>>;
}

/// KV bytes on the connection itself.
#[derive(Debug, Default)]
pub struct Tcp;

impl KvTransport for Tcp {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn stage(&self, _: &[u8]) -> std::io::Result<Option<String>> {
        Ok(None)
    }

    fn send<'a>(&'a self, stream: &'a mut TcpStream, bytes: &'a [u8]) -> BoxFuture<'a, std::io::Result<()>> {
        Box::pin(async move {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
    }

    fn receive<'a>(
        &'a self,
        stream: &'a mut BufReader<TcpStream>,
        _: Option<&'a str>,
        want: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, (usize, String)>> {
        Box::pin(async move {
            let mut out = vec![0u8; want];
            let mut got = 0;
            while got < want {
                match tokio::time::timeout(TIMEOUT, stream.read(&mut out[got..])).await {
                    Ok(Ok(0)) => return Err((got, "connection closed".into())),
                    Ok(Ok(n)) => got += n,
                    Ok(Err(e)) => return Err((got, e.to_string())),
                    Err(_) => return Err((got, format!("no data for {TIMEOUT:?}"))),
                }
            }
            Ok(out)
        })
    }
}

/// KV bytes in a file of a shared-memory directory.
#[derive(Debug)]
pub struct SharedMemory {
    dir: PathBuf,
}

impl SharedMemory {
    /// Files go to `dir` (e.g. `/dev/shm`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SharedMemory { dir: dir.into() }
    }
}

fn random_name(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    format!("{prefix}-{:016x}", h.finish())
}

impl KvTransport for SharedMemory {
    fn name(&self) -> &'static str {
        "shm"
    }

    fn stage(&self, bytes: &[u8]) -> std::io::Result<Option<String>> {
        let name = random_name("phalanx-kv");
        std::fs::write(self.dir.join(&name), bytes)?;
        Ok(Some(name))
    }

    fn send<'a>(&'a self, _: &'a mut TcpStream, _: &'a [u8]) -> BoxFuture<'a, std::io::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn receive<'a>(
        &'a self,
        _: &'a mut BufReader<TcpStream>,
        staged: Option<&'a str>,
        want: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, (usize, String)>> {
        Box::pin(async move {
            let Some(name) = staged.filter(|n| !n.contains('/')) else {
                return Err((0, "no shared-memory file named".into()));
            };
            let path = self.dir.join(name);
            let bytes = std::fs::read(&path).map_err(|e| (0, format!("{}: {e}", path.display())))?;
            let _ = std::fs::remove_file(&path);
            if bytes.len() != want { Err((bytes.len(), "short shared-memory file".into())) } else { Ok(bytes) }
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Request {
    Facts,
    Prefill { prompt: Vec<u8>, max_new: usize, layout: KvLayout, transport: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct FactsReply {
    facts: Facts,
    /// A marker file in the prefill worker's shared-memory directory.
    shm_marker: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PrefillReply {
    ok: bool,
    #[serde(default)]
    error: String,
    #[serde(default)]
    first: u8,
    #[serde(default)]
    tokens: usize,
    #[serde(default)]
    bytes: usize,
    #[serde(default)]
    staged: Option<String>,
}

/// The prefill side: serves KV on a listener.
pub struct PrefillServer {
    /// The model.
    pub model: Arc<Model>,
    /// This worker's facts (for peers' KV-domain checks).
    pub facts: Facts,
    /// Shared-memory directory and the marker proving it (None: no shared memory).
    pub shm: Option<(PathBuf, String)>,
    /// Called with (bytes, seconds, transport) after each transfer.
    pub on_sent: Arc<dyn Fn(usize, f64, &'static str) + Send + Sync>,
}

impl PrefillServer {
    /// Creates the marker file of `dir` for peers to find.
    pub fn shm_marker(dir: &Path, pod: &str) -> std::io::Result<(PathBuf, String)> {
        let name = random_name(&format!("phalanx-worker-{pod}"));
        std::fs::write(dir.join(&name), b"phalanx")?;
        Ok((dir.to_owned(), name))
    }

    /// Serves until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((stream, peer)) = listener.accept().await else { continue };
            let server = self.clone();
            tokio::spawn(async move {
                if let Err(e) = server.handle(stream).await {
                    tracing::warn!(%peer, error = %e, "KV request failed");
                }
            });
        }
    }

    async fn handle(&self, stream: TcpStream) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        if tokio::time::timeout(TIMEOUT, reader.read_line(&mut line)).await.is_err() {
            return Ok(());
        }
        let mut stream = reader.into_inner();
        let request: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => return reply(&mut stream, &PrefillReply::error(format!("bad request: {e}"))).await,
        };
        match request {
            Request::Facts => {
                let facts =
                    FactsReply { facts: self.facts.clone(), shm_marker: self.shm.as_ref().map(|(_, m)| m.clone()) };
                reply(&mut stream, &facts).await
            }
            Request::Prefill { prompt, max_new, layout, transport } => {
                let ours = self.model.config().layout();
                if layout != ours {
                    let error = format!(
                        "KV layout mismatch: this worker runs {}, the request wants {}",
                        ours.describe(),
                        layout.describe()
                    );
                    return reply(&mut stream, &PrefillReply::error(error)).await;
                }
                let model = self.model.clone();
                let result = tokio::task::spawn_blocking(move || model.prefill(&prompt, max_new))
                    .await
                    .map_err(std::io::Error::other)?;
                let (kv, first) = match result {
                    Ok(r) => r,
                    Err(e) => return reply(&mut stream, &PrefillReply::error(e.to_string())).await,
                };
                let bytes = kv.to_bytes();
                let shm;
                let chosen: &dyn KvTransport = match (&self.shm, transport.as_str()) {
                    (Some((dir, _)), "shm") => {
                        shm = SharedMemory::new(dir.clone());
                        &shm
                    }
                    _ => &Tcp,
                };
                let started = Instant::now();
                let staged = chosen.stage(&bytes)?;
                let header = PrefillReply {
                    ok: true,
                    error: String::new(),
                    first,
                    tokens: kv.tokens(),
                    bytes: bytes.len(),
                    staged,
                };
                reply(&mut stream, &header).await?;
                chosen.send(&mut stream, &bytes).await?;
                (self.on_sent)(bytes.len(), started.elapsed().as_secs_f64(), chosen.name());
                Ok(())
            }
        }
    }
}

impl PrefillReply {
    fn error(error: String) -> Self {
        PrefillReply { ok: false, error, first: 0, tokens: 0, bytes: 0, staged: None }
    }
}

async fn reply<T: Serialize>(stream: &mut TcpStream, value: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    stream.flush().await
}

async fn connect(peer: &str) -> Result<BufReader<TcpStream>, Error> {
    let io = |what: String| Error::Io { peer: peer.into(), what };
    let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(peer))
        .await
        .map_err(|_| io(format!("no connection after {TIMEOUT:?}")))?
        .map_err(|e| io(e.to_string()))?;
    Ok(BufReader::new(stream))
}

async fn exchange<T: serde::de::DeserializeOwned>(
    peer: &str,
    request: &Request,
) -> Result<(BufReader<TcpStream>, T), Error> {
    let io = |what: String| Error::Io { peer: peer.into(), what };
    let mut conn = connect(peer).await?;
    let mut line = serde_json::to_vec(request).expect("requests serialise");
    line.push(b'\n');
    conn.get_mut().write_all(&line).await.map_err(|e| io(e.to_string()))?;
    let mut answer = String::new();
    match tokio::time::timeout(TIMEOUT, conn.read_line(&mut answer)).await {
        Ok(Ok(0)) => return Err(io("closed the connection before answering".into())),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(io(e.to_string())),
        Err(_) => return Err(io(format!("no answer after {TIMEOUT:?}"))),
    }
    let parsed = serde_json::from_str(&answer).map_err(|e| io(format!("unreadable answer: {e}")))?;
    Ok((conn, parsed))
}

/// A prefill peer as the decode worker sees it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// `host:port`.
    pub address: String,
    /// Its facts.
    pub facts: Facts,
    /// Whether its shared memory is ours too.
    pub shares_memory: bool,
}

/// Asks a prefill worker where it is, and whether it shares `shm_dir` with us.
pub async fn peer_facts(address: &str, shm_dir: Option<&Path>) -> Result<Peer, Error> {
    let (_, reply): (_, FactsReply) = exchange(address, &Request::Facts).await?;
    let shares_memory = match (reply.shm_marker, shm_dir) {
        (Some(marker), Some(dir)) => !marker.contains('/') && dir.join(marker).exists(),
        _ => false,
    };
    Ok(Peer { address: address.into(), facts: reply.facts, shares_memory })
}

/// What one handoff moved.
#[derive(Debug, Clone, Copy)]
pub struct Moved {
    /// KV bytes.
    pub bytes: usize,
    /// Seconds from request to the last byte (prefill compute included).
    pub seconds: f64,
    /// Seconds of the transfer after the header.
    pub transfer_seconds: f64,
    /// `tcp` or `shm`.
    pub transport: &'static str,
}

/// Has `peer` prefill `prompt` and moves its KV here.
pub async fn fetch_kv(
    peer: &Peer,
    layout: &KvLayout,
    prompt: &[u8],
    max_new: usize,
    shm_dir: Option<&Path>,
) -> Result<(KvCache, u8, Moved), Error> {
    let started = Instant::now();
    let transport: Box<dyn KvTransport> = match (peer.shares_memory, shm_dir) {
        (true, Some(dir)) => Box::new(SharedMemory::new(dir)),
        _ => Box::new(Tcp),
    };
    let request = Request::Prefill {
        prompt: prompt.to_vec(),
        max_new,
        layout: layout.clone(),
        transport: transport.name().into(),
    };
    let (mut conn, header): (_, PrefillReply) = exchange(&peer.address, &request).await?;
    if !header.ok {
        return Err(Error::Refused { peer: peer.address.clone(), reason: header.error });
    }
    let transfer_started = Instant::now();
    let bytes = transport
        .receive(&mut conn, header.staged.as_deref(), header.bytes)
        .await
        .map_err(|(got, _)| Error::Dropped { peer: peer.address.clone(), got, want: header.bytes })?;
    let kv = KvCache::from_bytes(layout.clone(), header.tokens, &bytes)
        .map_err(|e| Error::Refused { peer: peer.address.clone(), reason: e.to_string() })?;
    let moved = Moved {
        bytes: bytes.len(),
        seconds: started.elapsed().as_secs_f64(),
        transfer_seconds: transfer_started.elapsed().as_secs_f64(),
        transport: transport.name(),
    };
    Ok((kv, header.first, moved))
}

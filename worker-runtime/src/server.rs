//! `phalanx-worker serve`: the reference engine behind an OpenAI-compatible HTTP API.
//!
//! - `POST /v1/completions` (`prompt`, `max_tokens`, `stream`): on a decode worker the
//!   prompt is prefilled by a prefill peer of its P/D group and the KV moved here; on a
//!   `both` worker everything runs here. Streaming answers are server-sent events ending
//!   in `data: [DONE]`.
//! - `/healthz`; `/readyz` (ready only once the placement checked out and, on a decode
//!   worker, a prefill peer answered); `/metrics` (Prometheus text).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::RwLock;

use crate::identity::Role;
use crate::model::Model;
use crate::transfer::{self, Peer};

/// Labels of the transfer metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// `tcp` or `shm`.
    pub transport: String,
}

/// Labels of the placement-check counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabel {
    /// The check.
    pub check: String,
    /// `ok` or `violated`.
    pub verdict: String,
}

/// The worker's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Seconds from request to first token.
    pub ttft: Histogram,
    /// Seconds between tokens.
    pub itl: Histogram,
    /// Tokens generated.
    pub tokens: Counter,
    /// KV bytes moved (received on decode, sent on prefill).
    pub kv_bytes: Family<TransportLabel, Counter>,
    /// Seconds per KV transfer.
    pub kv_seconds: Family<TransportLabel, Histogram>,
    /// Placement checks by verdict.
    pub checks: Family<CheckLabel, Counter>,
    registry: Registry,
}

impl Metrics {
    /// Registers everything under `phalanx_worker_`.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("phalanx_worker");
        let ttft = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let itl = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let tokens = Counter::default();
        let kv_bytes = Family::<TransportLabel, Counter>::default();
        let kv_seconds = Family::<TransportLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        let checks = Family::<CheckLabel, Counter>::default();
        registry.register("time_to_first_token_seconds", "Request to first token", ttft.clone());
        registry.register("inter_token_latency_seconds", "Between consecutive tokens", itl.clone());
        registry.register("generated_tokens", "Tokens generated", tokens.clone());
        registry.register("kv_transfer_bytes", "KV bytes moved between prefill and decode", kv_bytes.clone());
        registry.register("kv_transfer_seconds", "Seconds per KV transfer", kv_seconds.clone());
        registry.register("placement_checks", "Placement checks by verdict", checks.clone());
        Arc::new(Metrics { ttft, itl, tokens, kv_bytes, kv_seconds, checks, registry })
    }

    /// Records a KV transfer.
    pub fn moved(&self, bytes: usize, seconds: f64, transport: &str) {
        let label = TransportLabel { transport: transport.into() };
        self.kv_bytes.get_or_create(&label).inc_by(bytes as u64);
        self.kv_seconds.get_or_create(&label).observe(seconds);
    }

    fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("metrics encode");
        out
    }
}

/// What the HTTP handlers share.
pub struct AppState {
    /// The model.
    pub model: Arc<Model>,
    /// This worker's role.
    pub role: Role,
    /// Prefill peers (decode role).
    pub peers: RwLock<Vec<Peer>>,
    /// Shared-memory directory.
    pub shm_dir: Option<std::path::PathBuf>,
    /// Ready to serve.
    pub ready: AtomicBool,
    /// Why not ready, for `/readyz`.
    pub not_ready: RwLock<String>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    next_peer: AtomicUsize,
}

impl AppState {
    /// A state for `model` in `role`.
    pub fn new(
        model: Arc<Model>,
        role: Role,
        shm_dir: Option<std::path::PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Arc<AppState> {
        Arc::new(AppState {
            model,
            role,
            peers: RwLock::new(Vec::new()),
            shm_dir,
            ready: AtomicBool::new(false),
            not_ready: RwLock::new("starting".into()),
            metrics,
            next_peer: AtomicUsize::new(0),
        })
    }
}

/// The HTTP routes.
pub fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/v1/completions", axum::routing::post(completions))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(readyz))
        .route("/metrics", axum::routing::get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::SeqCst) {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, state.not_ready.read().await.clone()).into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([("content-type", "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    prompt: String,
    #[serde(default = "default_max_tokens")]
    max_tokens: usize,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    model: Option<String>,
}

fn default_max_tokens() -> usize {
    16
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": { "message": message, "type": "invalid_request_error" } }))).into_response()
}

/// Bytes to text: printable ASCII as is, anything else as `\xNN` (the model is byte-level).
pub fn detokenize(tokens: &[u8]) -> String {
    tokens
        .iter()
        .map(|&b| if (0x20..0x7f).contains(&b) || b == b'\n' { (b as char).to_string() } else { format!("\\x{b:02x}") })
        .collect()
}

async fn completions(State(state): State<Arc<AppState>>, Json(request): Json<CompletionRequest>) -> Response {
    let started = Instant::now();
    let prompt = request.prompt.as_bytes().to_vec();
    let max_new = request.max_tokens;
    if let Err(e) = state.model.check(&prompt, max_new) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    if max_new == 0 {
        return error(StatusCode::BAD_REQUEST, "max_tokens must be at least 1".into());
    }
    // Prefill: remote on a decode worker, here otherwise.
    let prefilled = match state.role {
        Role::Decode => {
            let peers = state.peers.read().await.clone();
            if peers.is_empty() {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no prefill worker of this P/D group is known yet".into(),
                );
            }
            let peer = &peers[state.next_peer.fetch_add(1, Ordering::Relaxed) % peers.len()];
            let layout = state.model.config().layout();
            match transfer::fetch_kv(peer, &layout, &prompt, max_new, state.shm_dir.as_deref()).await {
                Ok((kv, first, moved)) => {
                    state.metrics.moved(moved.bytes, moved.transfer_seconds, moved.transport);
                    Ok((kv, first, Some(moved)))
                }
                Err(e) => Err(e.to_string()),
            }
        }
        Role::Prefill | Role::Both => {
            let model = state.model.clone();
            let p = prompt.clone();
            match tokio::task::spawn_blocking(move || model.prefill(&p, max_new)).await {
                Ok(Ok((kv, first))) => Ok((kv, first, None)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    let (kv, first, moved) = match prefilled {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_GATEWAY, e),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u8>();
    let model = state.model.clone();
    let decoding = tokio::task::spawn_blocking(move || {
        model.decode(kv, first, max_new, |t| {
            let _ = tx.send(t);
        })
    });
    let id = format!("cmpl-{:x}", started.elapsed().as_nanos() ^ (prompt.len() as u128) << 64);
    let model_name = request.model.unwrap_or_else(|| state.model.config().fingerprint());
    let usage = |completion: usize| json!({ "prompt_tokens": prompt.len(), "completion_tokens": completion, "total_tokens": prompt.len() + completion });
    let kv_info = moved.map(|m| json!({ "bytes": m.bytes, "seconds": m.transfer_seconds, "transport": m.transport }));
    if request.stream {
        let metrics = state.metrics.clone();
        let prompt_len = prompt.len();
        let stream = async_stream(move |yield_| async move {
            let mut last = Instant::now();
            let mut count = 0usize;
            while let Some(t) = rx.recv().await {
                observe(&metrics, count, started, &mut last);
                count += 1;
                let chunk = json!({ "id": id, "object": "text_completion", "model": model_name,
                    "choices": [{ "index": 0, "text": detokenize(&[t]), "finish_reason": if count == max_new { json!("length") } else { json!(null) } }] });
                yield_(format!("data: {chunk}\n\n")).await;
            }
            let _ = decoding.await;
            let done = json!({ "id": id, "object": "text_completion", "model": model_name, "choices": [],
                "usage": { "prompt_tokens": prompt_len, "completion_tokens": count, "total_tokens": prompt_len + count }, "kv_transfer": kv_info });
            yield_(format!("data: {done}\n\n")).await;
            yield_("data: [DONE]\n\n".to_owned()).await;
        });
        return ([("content-type", "text/event-stream")], axum::body::Body::from_stream(stream)).into_response();
    }
    let mut tokens = Vec::new();
    let mut last = Instant::now();
    while let Some(t) = rx.recv().await {
        observe(&state.metrics, tokens.len(), started, &mut last);
        tokens.push(t);
    }
    match decoding.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return error(StatusCode::BAD_GATEWAY, e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    Json(json!({
        "id": id, "object": "text_completion", "model": model_name,
        "choices": [{ "index": 0, "text": detokenize(&tokens), "tokens": tokens, "finish_reason": "length" }],
        "usage": usage(tokens.len()),
        "kv_transfer": kv_info,
    }))
    .into_response()
}

fn observe(metrics: &Metrics, index: usize, started: Instant, last: &mut Instant) {
    if index == 0 {
        metrics.ttft.observe(started.elapsed().as_secs_f64());
    } else {
        metrics.itl.observe(last.elapsed().as_secs_f64());
    }
    *last = Instant::now();
    metrics.tokens.inc();
}

/// A stream fed by an async closure through a `yield_` callback (no extra crate).
fn async_stream<F, Fut>(body: F) -> impl futures::Stream<Item = Result<String, std::convert::Infallible>>
where
    F: FnOnce(
        Box<dyn Fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>,
    ) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    let yield_ = Box::new(move |s: String| {
        let tx = tx.clone();
        Box::pin(async move {
            let _ = tx.send(s).await;
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    });
    tokio::spawn(body(yield_));
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|s| (Ok(s), rx)) })
}

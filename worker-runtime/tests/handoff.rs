//! The KV handoff and the HTTP API, in one process over real sockets: a prefill server,
//! a decode worker's HTTP server, and the failures a client must see clearly.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use phalanx_worker::identity::Role;
use phalanx_worker::model::{Model, ModelConfig};
use phalanx_worker::server::{self, AppState, Metrics};
use phalanx_worker::transfer::{self, PrefillServer};
use phalanx_worker::verify::Facts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn config() -> ModelConfig {
    ModelConfig { layers: 3, heads: 2, head_dim: 8, ffn: 32, max_tokens: 512, seed: 11 }
}

/// A prefill server on a free port; returns its address and the bytes it reports sent.
async fn prefill_server(config: ModelConfig, shm: Option<&std::path::Path>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let server = Arc::new(PrefillServer {
        model: Arc::new(Model::new(config)),
        facts: Facts { pod: "prefill-0".into(), node: "node-a".into(), ..Default::default() },
        shm: shm.map(|dir| PrefillServer::shm_marker(dir, "prefill-0").unwrap()),
        on_sent: Arc::new(move |bytes, _, _| {
            counter.fetch_add(bytes, Ordering::SeqCst);
        }),
    });
    tokio::spawn(server.serve(listener));
    (address, sent)
}

#[tokio::test]
async fn tcp_and_shared_memory_handoffs_give_the_aggregated_tokens() {
    let shm = tempfile::tempdir().unwrap();
    let (address, sent) = prefill_server(config(), Some(shm.path())).await;
    let decode = Model::new(config());
    let prompt = b"The quick brown fox jumps over the lazy dog";
    let aggregated = decode.generate(prompt, 20).unwrap();

    // Another memory: TCP.
    let other = tempfile::tempdir().unwrap();
    let peer = transfer::peer_facts(&address, Some(other.path())).await.unwrap();
    assert!(!peer.shares_memory);
    assert_eq!(peer.facts.node, "node-a");
    let (kv, first, moved) =
        transfer::fetch_kv(&peer, &config().layout(), prompt, 20, Some(other.path())).await.unwrap();
    assert_eq!(moved.transport, "tcp");
    assert_eq!(moved.bytes, 3 * prompt.len() * 2 * 2 * 8 * 4, "layers × tokens × 2 × heads × head_dim × 4");
    assert_eq!(decode.decode(kv, first, 20, |_| {}).unwrap(), aggregated);

    // The same memory: shared memory, and the file is gone afterwards.
    let peer = transfer::peer_facts(&address, Some(shm.path())).await.unwrap();
    assert!(peer.shares_memory);
    let (kv, first, moved) = transfer::fetch_kv(&peer, &config().layout(), prompt, 20, Some(shm.path())).await.unwrap();
    assert_eq!(moved.transport, "shm");
    assert_eq!(decode.decode(kv, first, 20, |_| {}).unwrap(), aggregated);
    let left: Vec<_> = std::fs::read_dir(shm.path()).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(left.len(), 1, "only the marker stays: {left:?}");
    assert_eq!(sent.load(Ordering::SeqCst), 2 * moved.bytes);
}

#[tokio::test]
async fn a_wrong_layout_a_long_prompt_and_a_dropped_transfer_are_clear_errors() {
    let (address, _) = prefill_server(config(), None).await;
    let peer = transfer::peer_facts(&address, None).await.unwrap();
    let other_shape = ModelConfig { heads: 4, ..config() };
    let err = transfer::fetch_kv(&peer, &other_shape.layout(), b"hi", 4, None).await.unwrap_err();
    assert!(err.to_string().contains("KV layout mismatch"), "{err}");
    let err = transfer::fetch_kv(&peer, &config().layout(), &[b'x'; 600], 4, None).await.unwrap_err();
    assert!(err.to_string().contains("this model takes at most 512"), "{err}");
    // The prefill worker still serves.
    assert!(transfer::fetch_kv(&peer, &config().layout(), b"hi", 4, None).await.is_ok());

    // A peer that announces KV and dies halfway.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dying = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        for _ in 0..2 {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let request = String::from_utf8_lossy(&buf[..n]);
            if request.contains("\"facts\"") {
                s.write_all(b"{\"facts\":{\"pod\":\"p\",\"node\":\"n\",\"nvlink_domains\":[],\"numa_nodes\":[],\"topology\":{}},\"shm_marker\":null}\n").await.unwrap();
            } else {
                s.write_all(b"{\"ok\":true,\"first\":1,\"tokens\":2,\"bytes\":384}\n").await.unwrap();
                s.write_all(&[0u8; 100]).await.unwrap();
            }
        }
    });
    let peer = transfer::peer_facts(&dying, None).await.unwrap();
    let err = transfer::fetch_kv(&peer, &config().layout(), b"hi", 4, None).await.unwrap_err();
    assert_eq!(err.to_string(), format!("KV transfer from {dying} dropped after 100 of 384 bytes"));
}

async fn http(address: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

async fn get(address: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(address).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    (out[9..12].parse().unwrap(), out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

#[tokio::test]
async fn a_decode_worker_serves_completions_with_remote_prefill() {
    let (prefill, _) = prefill_server(config(), None).await;
    let metrics = Metrics::new();
    let state = AppState::new(Arc::new(Model::new(config())), Role::Decode, None, metrics);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(axum::serve(listener, server::router(state.clone())).into_future());

    assert_eq!(get(&address, "/readyz").await.0, 503, "not ready before a peer is known");
    let (status, body) = http(&address, r#"{"prompt":"hello","max_tokens":4}"#).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no prefill worker"), "{body}");

    *state.peers.write().await = vec![transfer::peer_facts(&prefill, None).await.unwrap()];
    state.ready.store(true, Ordering::SeqCst);
    let prompt = "Disaggregated serving moves the KV cache";
    let (status, body) = http(&address, &format!(r#"{{"prompt":"{prompt}","max_tokens":12}}"#)).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let tokens: Vec<u8> = serde_json::from_value(answer["choices"][0]["tokens"].clone()).unwrap();
    assert_eq!(tokens, Model::new(config()).generate(prompt.as_bytes(), 12).unwrap(), "identical to one process");
    assert_eq!(answer["kv_transfer"]["bytes"], 3 * prompt.len() * 2 * 2 * 8 * 4);
    assert_eq!(answer["usage"]["completion_tokens"], 12);

    // Streaming: the same tokens as server-sent events, then [DONE].
    let (status, body) = http(&address, &format!(r#"{{"prompt":"{prompt}","max_tokens":12,"stream":true}}"#)).await;
    assert_eq!(status, 200);
    assert!(body.contains("data: [DONE]"), "{body}");
    let streamed: String = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|l| *l != "[DONE]")
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["choices"][0]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(streamed, answer["choices"][0]["text"].as_str().unwrap());

    let (status, body) = http(&address, r#"{"prompt":"","max_tokens":4}"#).await;
    assert_eq!((status, body.contains("the prompt is empty")), (400, true), "{body}");
    let (_, metrics) = get(&address, "/metrics").await;
    assert!(metrics.contains("phalanx_worker_kv_transfer_bytes_total{transport=\"tcp\"}"), "{metrics}");
    assert!(metrics.contains("phalanx_worker_time_to_first_token_seconds_count 2"), "{metrics}");
}

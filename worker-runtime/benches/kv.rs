//! KV handoff: transfer bandwidth over loopback TCP and over shared memory for 1k, 8k and
//! 32k-token prompts (the reference model's layout, 2 KiB per token), and time to first
//! token aggregated (prefill here) vs disaggregated (prefill on a peer, KV moved here).
//!
//! `cargo bench -p phalanx-worker --bench kv`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use phalanx_worker::model::{Model, ModelConfig};
use phalanx_worker::transfer::{self, KvTransport, PrefillServer, SharedMemory, Tcp};
use phalanx_worker::verify::Facts;
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};

/// Moves 1k, 8k and 32k tokens of KV over loopback TCP and through shared memory.
fn transfer_bandwidth(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let per_token = ModelConfig::default().layout().bytes_per_token();
    let shm_dir = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
    let mut group = c.benchmark_group("kv_transfer");
    group.sample_size(10);
    for tokens in [1024usize, 8192, 32768] {
        let bytes = vec![7u8; tokens * per_token];
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new("tcp_loopback", tokens), &bytes, |b, bytes| {
            b.to_async(&rt).iter(|| async {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let address = listener.local_addr().unwrap();
                let sender = tokio::spawn({
                    let bytes = bytes.clone();
                    async move {
                        let (mut s, _) = listener.accept().await.unwrap();
                        Tcp.send(&mut s, &bytes).await.unwrap();
                    }
                });
                let mut conn = BufReader::new(TcpStream::connect(address).await.unwrap());
                let got = Tcp.receive(&mut conn, None, bytes.len()).await.unwrap();
                sender.await.unwrap();
                assert_eq!(got.len(), bytes.len());
            })
        });
        let shm = SharedMemory::new(&shm_dir);
        group.bench_with_input(BenchmarkId::new("shared_memory", tokens), &bytes, |b, bytes| {
            b.to_async(&rt).iter(|| async {
                let staged = shm.stage(bytes).unwrap();
                // The receiver needs no connection for shared memory; a dummy one satisfies the trait.
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let address = listener.local_addr().unwrap();
                let mut conn = BufReader::new(TcpStream::connect(address).await.unwrap());
                let got = shm.receive(&mut conn, staged.as_deref(), bytes.len()).await.unwrap();
                assert_eq!(got.len(), bytes.len());
            })
        });
    }
    group.finish();
}

/// First token for 128 and 512-token prompts, prefilled here or on a loopback peer.
fn time_to_first_token(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let config = ModelConfig::default();
    let model = Arc::new(Model::new(config));
    let (peer, _guard) = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = Arc::new(PrefillServer {
            model: model.clone(),
            facts: Facts::default(),
            shm: None,
            on_sent: Arc::new(|_, _, _| {}),
        });
        let guard = tokio::spawn(server.serve(listener));
        (transfer::peer_facts(&address, None).await.unwrap(), guard)
    });
    let mut group = c.benchmark_group("ttft");
    group.sample_size(10);
    for tokens in [128usize, 512] {
        let prompt: Vec<u8> = (0..tokens).map(|i| b'a' + (i % 26) as u8).collect();
        group.bench_with_input(BenchmarkId::new("aggregated", tokens), &prompt, |b, prompt| {
            b.iter(|| model.prefill(prompt, 1).unwrap().1)
        });
        group.bench_with_input(BenchmarkId::new("disaggregated_tcp", tokens), &prompt, |b, prompt| {
            b.to_async(&rt)
                .iter(|| async { transfer::fetch_kv(&peer, &config.layout(), prompt, 1, None).await.unwrap().1 })
        });
    }
    group.finish();
}

criterion_group!(benches, transfer_bandwidth, time_to_first_token);
criterion_main!(benches);

//! The kubelet's plugin-registration client sends the socket's *path* as the HTTP/2
//! `:authority` (it dials a bare path, so grpc-go's passthrough resolver uses the path as
//! the authority; kubernetes/kubernetes#109081, still so in 1.37's
//! `pluginmanager/operationexecutor`). Rust's HTTP/2 server (`h2`, under tonic) rejects
//! such a request with `PROTOCOL_ERROR`, so a Rust plugin is never registered by a real
//! kubelet. The DRA service itself is dialled as `unix:<path>` and is not affected.
//!
//! This module sits between the registration socket and the gRPC server: it copies the
//! connection both ways and, in the client's direction, re-encodes every header block
//! with an invalid `:authority` replaced by `localhost` (what grpc-go sends for
//! `unix:` targets). Header blocks are decoded with the connection's HPACK state and
//! re-encoded as literals without indexing, so the server's HPACK table stays empty and
//! in step; every other frame passes through byte for byte.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a peer may announce: our frames never exceed it.
const MAX_FRAME: usize = 16_384;
/// A header block larger than this is refused (the kubelet's are a few hundred bytes).
const MAX_BLOCK: usize = 64 * 1024;

/// Accepts connections on `listener` and hands the gRPC server one stream per
/// connection, with `:authority` fixed on the way in.
pub fn incoming(listener: UnixListener) -> ReceiverStream<io::Result<DuplexStream>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let accepted = listener.accept().await;
            let (client, _) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let (server_end, proxy_end) = tokio::io::duplex(64 * 1024);
            if tx.send(Ok(server_end)).await.is_err() {
                return;
            }
            tokio::spawn(async move {
                if let Err(e) = relay(client, proxy_end).await {
                    tracing::debug!(error = %e, "registration connection ended");
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

async fn relay(client: UnixStream, server: DuplexStream) -> io::Result<()> {
    let (client_read, mut client_write) = client.into_split();
    let (server_read, server_write) = tokio::io::split(server);
    let upstream = fix_client_frames(client_read, server_write);
    let downstream = async move {
        let mut server_read = server_read;
        tokio::io::copy(&mut server_read, &mut client_write).await?;
        client_write.shutdown().await
    };
    let (a, b) = tokio::join!(upstream, downstream);
    a.and(b)
}

/// Copies the client's HTTP/2 stream to `out`, rewriting header blocks.
async fn fix_client_frames<R, W>(mut input: R, mut out: W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; 24];
    input.read_exact(&mut preface).await?;
    if preface != PREFACE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not an HTTP/2 connection preface"));
    }
    out.write_all(&preface).await?;
    let mut decoder = hpack::Decoder::new();
    // A header block being collected: (stream, END_STREAM, fragments so far).
    let mut pending: Option<(u32, bool, Vec<u8>)> = None;
    loop {
        let mut head = [0u8; 9];
        match input.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return out.shutdown().await,
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        input.read_exact(&mut payload).await?;
        match kind {
            HEADERS => {
                let fragment = header_fragment(&payload, flags)?;
                pending = Some((stream, flags & END_STREAM != 0, fragment.to_vec()));
            }
            CONTINUATION if pending.as_ref().is_some_and(|(s, _, _)| *s == stream) => {
                let block = &mut pending.as_mut().expect("checked").2;
                block.extend_from_slice(&payload);
            }
            _ => {
                out.write_all(&head).await?;
                out.write_all(&payload).await?;
                continue;
            }
        }
        if pending.as_ref().is_some_and(|(_, _, b)| b.len() > MAX_BLOCK) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "header block too large"));
        }
        if flags & END_HEADERS != 0 {
            let (stream, end_stream, block) = pending.take().expect("a header block is pending");
            let headers = decoder
                .decode(&block)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("HPACK: {e:?}")))?;
            let fixed = encode_literal(&fix_authority(headers));
            write_header_frames(&mut out, stream, end_stream, &fixed).await?;
        }
    }
}

/// The header block fragment of a HEADERS payload (padding and priority removed).
fn header_fragment(payload: &[u8], flags: u8) -> io::Result<&[u8]> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed HEADERS frame");
    let mut start = 0;
    let mut end = payload.len();
    if flags & PADDED != 0 {
        let pad = *payload.first().ok_or_else(bad)? as usize;
        start = 1;
        end = end.checked_sub(pad).ok_or_else(bad)?;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    payload.get(start..end).ok_or_else(bad)
}

/// Replaces an `:authority` that is not a valid URI authority with `localhost`.
fn fix_authority(mut headers: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    for (name, value) in &mut headers {
        if name.as_slice() == b":authority" && !valid_authority(value) {
            tracing::debug!(authority = %String::from_utf8_lossy(value), "replacing an invalid :authority with localhost");
            *value = b"localhost".to_vec();
        }
    }
    headers
}

/// Whether the server's HTTP stack accepts `value` as an authority (the same parser).
fn valid_authority(value: &[u8]) -> bool {
    !value.is_empty() && tonic::codegen::http::uri::Authority::try_from(value).is_ok()
}

/// HPACK "literal header field without indexing — new name" for every header: the
/// peer's dynamic table is never touched.
fn encode_literal(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        encode_string(&mut out, name);
        encode_string(&mut out, value);
    }
    out
}

/// A string literal without Huffman coding: a 7-bit-prefix length, then the bytes.
fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    let mut len = s.len();
    if len < 127 {
        out.push(len as u8);
    } else {
        out.push(127);
        len -= 127;
        while len >= 128 {
            out.push((len % 128) as u8 | 0x80);
            len /= 128;
        }
        out.push(len as u8);
    }
    out.extend_from_slice(s);
}

async fn write_header_frames<W: AsyncWrite + Unpin>(
    out: &mut W,
    stream: u32,
    end_stream: bool,
    block: &[u8],
) -> io::Result<()> {
    let chunks: Vec<&[u8]> = if block.is_empty() { vec![block] } else { block.chunks(MAX_FRAME).collect() };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let mut flags = if i == last { END_HEADERS } else { 0 };
        if i == 0 && end_stream {
            flags |= END_STREAM;
        }
        let len = (chunk.len() as u32).to_be_bytes();
        let id = stream.to_be_bytes();
        out.write_all(&[len[1], len[2], len[3], kind, flags, id[0], id[1], id[2], id[3]]).await?;
        out.write_all(chunk).await?;
    }
    out.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let id = stream.to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags, id[0], id[1], id[2], id[3]];
        f.extend_from_slice(payload);
        f
    }

    /// Reads the frames back out of `bytes` (after the preface): (type, flags, stream, payload).
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut rest = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            out.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        out
    }

    #[tokio::test]
    async fn a_path_authority_becomes_localhost_and_other_frames_pass_unchanged() {
        let mut encoder = hpack::Encoder::new();
        let request: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/pluginregistration.Registration/GetInfo"),
            (b":authority", b"/var/lib/kubelet/plugins_registry/gpu.phalanx.dev-reg.sock"),
            (b"content-type", b"application/grpc"),
        ];
        let block = encoder.encode(request.clone());
        // Padded and split over a CONTINUATION, as a client may send it.
        let (a, b) = block.split_at(10);
        let mut padded = vec![3u8];
        padded.extend_from_slice(a);
        padded.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(HEADERS, PADDED, 1, &padded));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        input.extend(frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0])); // DATA
        // A second request reuses the client's dynamic table (indexed fields).
        let second = encoder.encode(request.clone());
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));

        let mut out = Vec::new();
        fix_client_frames(input.as_slice(), &mut out).await.unwrap();
        let got = frames(&out);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!((got[0].0, got[0].3.len()), (0x4, 0), "SETTINGS unchanged");
        assert_eq!(got[2], (0x0, END_STREAM, 1, vec![0, 0, 0, 0, 0]), "DATA unchanged");
        let mut server = hpack::Decoder::new();
        for (i, stream, flags) in [(1, 1, END_HEADERS), (3, 3, END_HEADERS | END_STREAM)] {
            assert_eq!((got[i].0, got[i].1, got[i].2), (HEADERS, flags, stream));
            let headers = server.decode(&got[i].3).unwrap();
            let authority = headers.iter().find(|(n, _)| n == b":authority").unwrap();
            assert_eq!(authority.1, b"localhost");
            let path = headers.iter().find(|(n, _)| n == b":path").unwrap();
            assert_eq!(path.1, b"/pluginregistration.Registration/GetInfo");
            assert_eq!(headers.len(), 5);
        }
    }

    #[test]
    fn valid_authorities_are_kept() {
        assert!(valid_authority(b"localhost"));
        assert!(valid_authority(b"127.0.0.1:8080"));
        assert!(valid_authority(b"[::1]:443"));
        assert!(!valid_authority(b"/var/lib/kubelet/plugins_registry/x.sock"));
        assert!(!valid_authority(b"%2Fvar%2Flib%2Fkubelet%2Fplugins_registry%2Fx.sock"));
        assert!(!valid_authority(b""));
        let long = vec![b'a'; 300];
        let mut out = Vec::new();
        encode_string(&mut out, &long);
        let mut d = hpack::Decoder::new();
        let mut block = vec![0x00];
        encode_string(&mut block, b"x-long");
        block.extend_from_slice(&out);
        assert_eq!(d.decode(&block).unwrap(), vec![(b"x-long".to_vec(), long)]);
    }
}

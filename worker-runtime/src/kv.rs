//! The KV cache: per layer, the keys and values of every token so far, and its layout
//! (what a receiver must match to use it).
//!
//! Wire form ([`KvCache::to_bytes`]): for each layer, keys then values, each
//! `tokens × heads × head_dim` little-endian `f32` — exactly
//! `layers × tokens × 2 × heads × head_dim × 4` bytes, nothing else; the layout and the
//! token count travel in the transfer's header.

use serde::{Deserialize, Serialize};

/// What a KV cache is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvLayout {
    /// Layers.
    pub layers: usize,
    /// KV heads.
    pub heads: usize,
    /// Head width.
    pub head_dim: usize,
    /// Bytes per element (4: f32).
    pub dtype_bytes: usize,
    /// The model's weights (shape and seed): KV of other weights is meaningless.
    pub model: String,
}

impl KvLayout {
    /// Bytes of KV per token: `layers × 2 × heads × head_dim × dtype`.
    pub fn bytes_per_token(&self) -> usize {
        self.layers * 2 * self.heads * self.head_dim * self.dtype_bytes
    }

    /// For messages.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} layers × {} heads × {} dims, {} B/elem)",
            self.model, self.layers, self.heads, self.head_dim, self.dtype_bytes
        )
    }
}

/// Why bytes are not a KV cache of a layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{got} bytes of KV for {tokens} tokens, but the layout needs {want}")]
pub struct SizeMismatch {
    /// Received.
    pub got: usize,
    /// Expected.
    pub want: usize,
    /// Tokens announced.
    pub tokens: usize,
}

/// Keys and values per layer.
#[derive(Debug, Clone, PartialEq)]
pub struct KvCache {
    layout: KvLayout,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

impl KvCache {
    /// An empty cache.
    pub fn new(layout: KvLayout) -> KvCache {
        let layers = layout.layers;
        KvCache { layout, keys: vec![Vec::new(); layers], values: vec![Vec::new(); layers] }
    }

    /// Its layout.
    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    fn width(&self) -> usize {
        self.layout.heads * self.layout.head_dim
    }

    /// Tokens held.
    pub fn tokens(&self) -> usize {
        self.keys.first().map_or(0, |k| k.len() / self.width().max(1))
    }

    /// Appends one token's key and value at `layer`.
    pub fn push(&mut self, layer: usize, key: &[f32], value: &[f32]) {
        self.keys[layer].extend_from_slice(key);
        self.values[layer].extend_from_slice(value);
    }

    /// The key of token `t` at `layer`.
    pub fn key(&self, layer: usize, t: usize) -> &[f32] {
        let w = self.width();
        &self.keys[layer][t * w..(t + 1) * w]
    }

    /// The value of token `t` at `layer`.
    pub fn value(&self, layer: usize, t: usize) -> &[f32] {
        let w = self.width();
        &self.values[layer][t * w..(t + 1) * w]
    }

    /// The wire form (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.tokens() * self.layout.bytes_per_token());
        for (k, v) in self.keys.iter().zip(&self.values) {
            for x in k.iter().chain(v) {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out
    }

    /// Reads the wire form of `tokens` tokens of `layout`.
    pub fn from_bytes(layout: KvLayout, tokens: usize, bytes: &[u8]) -> Result<KvCache, SizeMismatch> {
        let want = tokens * layout.bytes_per_token();
        if bytes.len() != want || layout.dtype_bytes != 4 {
            return Err(SizeMismatch { got: bytes.len(), want, tokens });
        }
        let per = tokens * layout.heads * layout.head_dim;
        let mut floats = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        let mut cache = KvCache::new(layout);
        for l in 0..cache.layout.layers {
            cache.keys[l] = floats.by_ref().take(per).collect();
            cache.values[l] = floats.by_ref().take(per).collect();
        }
        Ok(cache)
    }
}

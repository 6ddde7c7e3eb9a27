//! The reference engine: a small decoder-only transformer on the CPU with deterministic
//! seeded weights, so the whole prefill/decode path runs where there is no GPU and no
//! model file.
//!
//! Byte-level tokens (vocabulary 256), learned positions, pre-norm blocks of multi-head
//! causal self-attention and a ReLU MLP, an output projection, greedy decoding. Written
//! as plain loops (a few hundred lines) rather than with a tensor crate: the model is tiny,
//! and plain code makes the arithmetic order explicit — every token, in prefill or in
//! decode, goes through the same [`Model::step`], so a KV cache computed on one worker and
//! continued on another gives exactly the tokens one process would.

use serde::{Deserialize, Serialize};

use crate::kv::{KvCache, KvLayout};

/// The shape of a model (and so of its KV cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Decoder layers.
    pub layers: usize,
    /// Attention heads (KV heads equal query heads).
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// MLP width.
    pub ffn: usize,
    /// Longest sequence (prompt + output) the model accepts.
    pub max_tokens: usize,
    /// Seed of the weights.
    pub seed: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { layers: 4, heads: 4, head_dim: 16, ffn: 256, max_tokens: 4096, seed: 7 }
    }
}

impl ModelConfig {
    /// Model width.
    pub fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// The KV layout this model produces.
    pub fn layout(&self) -> KvLayout {
        KvLayout {
            layers: self.layers,
            heads: self.heads,
            head_dim: self.head_dim,
            dtype_bytes: 4,
            model: self.fingerprint(),
        }
    }

    /// Identifies the weights: shape and seed.
    pub fn fingerprint(&self) -> String {
        format!("phalanx-ref-l{}h{}d{}f{}s{}", self.layers, self.heads, self.head_dim, self.ffn, self.seed)
    }
}

/// Vocabulary: bytes.
pub const VOCAB: usize = 256;

struct Layer {
    wq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    wo: Vec<f32>,
    w1: Vec<f32>,
    w2: Vec<f32>,
}

/// The model with its weights.
pub struct Model {
    config: ModelConfig,
    embed: Vec<f32>,
    positions: Vec<f32>,
    layers: Vec<Layer>,
    unembed: Vec<f32>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Why generation could not run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Prompt plus output exceed the model's length.
    #[error("the prompt has {prompt} tokens and {max_new} more were asked for; this model takes at most {limit}")]
    TooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Tokens to generate.
        max_new: usize,
        /// The model's limit.
        limit: usize,
    },
    /// An empty prompt.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// A KV cache of another model or shape.
    #[error("KV layout mismatch: this worker runs {ours}, the KV is {theirs}")]
    Layout {
        /// Our layout.
        ours: String,
        /// The KV's.
        theirs: String,
    },
}

/// SplitMix64: a tiny, well-known generator; the weights depend only on the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-scale, scale).
    fn weights(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale).collect()
    }
}

fn rms_norm(x: &[f32]) -> Vec<f32> {
    let mean = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean + 1e-5).sqrt();
    x.iter().map(|v| v * scale).collect()
}

/// `x (1×n) · w (n×m)`, row-major `w`.
fn matvec(x: &[f32], w: &[f32], m: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m];
    for (i, xi) in x.iter().enumerate() {
        let row = &w[i * m..(i + 1) * m];
        for (o, wij) in out.iter_mut().zip(row) {
            *o += xi * wij;
        }
    }
    out
}

impl Model {
    /// Builds the model from its seed.
    pub fn new(config: ModelConfig) -> Model {
        let d = config.width();
        let mut rng = Rng(config.seed);
        let s = 1.0 / (d as f32).sqrt();
        let embed = rng.weights(VOCAB * d, 1.0);
        let positions = rng.weights(config.max_tokens * d, 0.1);
        let layers = (0..config.layers)
            .map(|_| Layer {
                wq: rng.weights(d * d, s),
                wk: rng.weights(d * d, s),
                wv: rng.weights(d * d, s),
                wo: rng.weights(d * d, s),
                w1: rng.weights(d * config.ffn, s),
                w2: rng.weights(config.ffn * d, 1.0 / (config.ffn as f32).sqrt()),
            })
            .collect();
        let unembed = rng.weights(d * VOCAB, s);
        Model { config, embed, positions, layers, unembed }
    }

    /// The model's shape.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// One token at the next position of `kv`: appends its keys and values to `kv` and
    /// returns the next token (greedy).
    pub fn step(&self, token: u8, kv: &mut KvCache) -> u8 {
        let c = &self.config;
        let d = c.width();
        let pos = kv.tokens();
        let mut x: Vec<f32> =
            (0..d).map(|i| self.embed[token as usize * d + i] + self.positions[pos * d + i]).collect();
        for (l, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x);
            let q = matvec(&h, &layer.wq, d);
            let k = matvec(&h, &layer.wk, d);
            let v = matvec(&h, &layer.wv, d);
            kv.push(l, &k, &v);
            let mut attended = vec![0.0f32; d];
            let scale = 1.0 / (c.head_dim as f32).sqrt();
            for head in 0..c.heads {
                let span = head * c.head_dim..(head + 1) * c.head_dim;
                let scores: Vec<f32> = (0..=pos)
                    .map(|t| {
                        let kt = kv.key(l, t);
                        q[span.clone()].iter().zip(&kt[span.clone()]).map(|(a, b)| a * b).sum::<f32>() * scale
                    })
                    .collect();
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exp: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f32 = exp.iter().sum();
                for (t, e) in exp.iter().enumerate() {
                    let vt = kv.value(l, t);
                    let p = e / total;
                    for (a, b) in attended[span.clone()].iter_mut().zip(&vt[span.clone()]) {
                        *a += p * b;
                    }
                }
            }
            let out = matvec(&attended, &layer.wo, d);
            x.iter_mut().zip(&out).for_each(|(a, b)| *a += b);
            let h2 = rms_norm(&x);
            let hidden: Vec<f32> = matvec(&h2, &layer.w1, c.ffn).into_iter().map(|v| v.max(0.0)).collect();
            let mlp = matvec(&hidden, &layer.w2, d);
            x.iter_mut().zip(&mlp).for_each(|(a, b)| *a += b);
        }
        let logits = matvec(&rms_norm(&x), &self.unembed, VOCAB);
        let mut best = (0usize, f32::NEG_INFINITY);
        for (t, &logit) in logits.iter().enumerate() {
            if logit > best.1 {
                best = (t, logit);
            }
        }
        best.0 as u8
    }

    /// Checks a request fits the model.
    pub fn check(&self, prompt: &[u8], max_new: usize) -> Result<(), Error> {
        if prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        if prompt.len() + max_new > self.config.max_tokens {
            return Err(Error::TooLong { prompt: prompt.len(), max_new, limit: self.config.max_tokens });
        }
        Ok(())
    }

    /// Prefill: the prompt's KV cache and the first generated token.
    pub fn prefill(&self, prompt: &[u8], max_new: usize) -> Result<(KvCache, u8), Error> {
        self.check(prompt, max_new)?;
        let mut kv = KvCache::new(self.config.layout());
        let mut next = 0;
        for &t in prompt {
            next = self.step(t, &mut kv);
        }
        Ok((kv, next))
    }

    /// Decode: continues from a prefilled cache and its first token; `on_token` sees each
    /// token as it is produced. Returns all generated tokens (the first included).
    pub fn decode(
        &self,
        mut kv: KvCache,
        first: u8,
        max_new: usize,
        mut on_token: impl FnMut(u8),
    ) -> Result<Vec<u8>, Error> {
        if kv.layout() != &self.config.layout() {
            return Err(Error::Layout { ours: self.config.layout().describe(), theirs: kv.layout().describe() });
        }
        let mut out = Vec::with_capacity(max_new);
        let mut next = first;
        for i in 0..max_new {
            out.push(next);
            on_token(next);
            if i + 1 < max_new {
                next = self.step(next, &mut kv);
            }
        }
        Ok(out)
    }

    /// Prefill and decode in one process: the aggregated reference.
    pub fn generate(&self, prompt: &[u8], max_new: usize) -> Result<Vec<u8>, Error> {
        if max_new == 0 {
            self.check(prompt, 0)?;
            return Ok(Vec::new());
        }
        let (kv, first) = self.prefill(prompt, max_new)?;
        self.decode(kv, first, max_new, |_| {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small(seed: u64) -> ModelConfig {
        ModelConfig { layers: 2, heads: 2, head_dim: 8, ffn: 32, max_tokens: 128, seed }
    }

    #[test]
    fn generation_is_deterministic_and_depends_on_the_seed() {
        let a = Model::new(small(1)).generate(b"hello", 16).unwrap();
        let b = Model::new(small(1)).generate(b"hello", 16).unwrap();
        let c = Model::new(small(2)).generate(b"hello", 16).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c, "different weights, different text");
        let distinct: std::collections::BTreeSet<u8> = a.iter().copied().collect();
        assert!(distinct.len() > 1, "the output is not one repeated token: {a:?}");
        assert_ne!(a, Model::new(small(1)).generate(b"world", 16).unwrap(), "the prompt matters");
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn bad_requests_get_clear_errors() {
        let m = Model::new(small(1));
        assert_eq!(m.generate(b"", 4), Err(Error::EmptyPrompt));
        let err = m.generate(&[b'a'; 120], 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the prompt has 120 tokens and 20 more were asked for; this model takes at most 128"
        );
        let (kv, first) = Model::new(small(3)).prefill(b"hi", 4).unwrap();
        let err = m.decode(kv, first, 4, |_| {}).unwrap_err();
        assert!(err.to_string().contains("KV layout mismatch"), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Prefill here, KV serialised to bytes and back, decode there: token for token the
        /// aggregated output, and exactly layers × tokens × 2 × heads × head_dim × 4 bytes.
        #[test]
        fn disaggregated_equals_aggregated(
            prompt in proptest::collection::vec(any::<u8>(), 1..40),
            max_new in 1usize..24,
            layers in 1usize..4, heads in 1usize..4, head_dim in 1usize..12, seed in any::<u64>(),
        ) {
            let config = ModelConfig { layers, heads, head_dim, ffn: 16, max_tokens: 96, seed };
            let prefill_worker = Model::new(config);
            let decode_worker = Model::new(config);
            let aggregated = prefill_worker.generate(&prompt, max_new).unwrap();
            let (kv, first) = prefill_worker.prefill(&prompt, max_new).unwrap();
            let bytes = kv.to_bytes();
            prop_assert_eq!(bytes.len(), layers * prompt.len() * 2 * heads * head_dim * 4);
            let moved = KvCache::from_bytes(config.layout(), prompt.len(), &bytes).unwrap();
            let disaggregated = decode_worker.decode(moved, first, max_new, |_| {}).unwrap();
            prop_assert_eq!(aggregated, disaggregated);
        }
    }
}

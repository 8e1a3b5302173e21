//! ModernBERT's attention, apart from its projections: rotary positions, and
//! which keys each query sees.
//!
//! A global layer sees every key of its row (of its document, with
//! `documents`). A local layer sees the keys within `half` positions either
//! side. At short lengths that is one T×T score matrix with a band mask. At
//! long ones (from `16 * half` tokens: 1024 with ModernBERT's window of 128,
//! where the chunks' extra copies start to pay on a CPU) the queries are cut
//! into chunks of `half` rows and each chunk meets only the `3 * half` keys
//! that can reach it, so the work grows as T × 3·half instead of T²: 8192
//! tokens cost 192 scores per query, not 8192. Chunks go to torch's fused
//! attention as extra heads (B, heads × chunks, rows, keys).
//!
//! Every mask is built once per forward pass ([`Visibility`]) and shared by
//! the layers. A query that would see no key at all (a padding position far
//! from any real token) sees itself, so no softmax row is empty.

use tch::{Device, Kind, Tensor};

use runner_encoder::documents::{keys_within, with_self_if_empty};
use runner_encoder::layers::Pass;

/// Rotary position embeddings of one layer type: `cos` and `sin` (1 or B, T,
/// head_dim), `sin` with its first half negated, so that the rotation is
/// `x * cos + swap(x) * sin` where `swap` exchanges the two halves of `x`
/// (transformers' `rotate_half` with the sign moved into `sin`: the same
/// products, bit for bit, with no slices to zero-fill in the backward pass).
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    /// transformers' default RoPE: inverse frequencies `theta^(-2i/d)`, in float32.
    pub fn new(positions: &Tensor, head_dim: i64, theta: f64) -> Self {
        let device = positions.device();
        let exponents = Tensor::arange_start_step(0, head_dim, 2, (Kind::Float, device)) / head_dim as f64;
        let inv_freq = Tensor::from(theta as f32).to_device(device).pow(&exponents).reciprocal(); // (d/2,)
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq; // (.., T, d/2)
        let sin = freqs.sin();
        Rotary { cos: Tensor::cat(&[&freqs, &freqs], -1).cos(), sin: Tensor::cat(&[-&sin, sin], -1) }
    }

    /// `x` (B, nh, T, hd) rotated, computed in float32 and returned in `x`'s kind.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x = x.to_kind(Kind::Float);
        let (b, nh, t, hd) = x.size4().expect("x is (B, nh, T, hd)");
        let swapped = x.view([b, nh, t, 2, hd / 2]).flip([3]).view([b, nh, t, hd]);
        let (cos, sin) = (self.cos.unsqueeze(1), self.sin.unsqueeze(1)); // (.., 1, T, hd)
        (x * cos + swapped * sin).to_kind(kind)
    }
}

/// How a local layer lays out its work.
enum Local {
    /// One T×T score matrix; `allowed` (B|1, 1, T, T).
    Dense(Tensor),
    /// Query chunks of `chunk` rows against key spans of `chunk + 2 * half`;
    /// `allowed` (B|1, heads × n, chunk, chunk + 2 * half), `padded` the
    /// length after the queries are padded to whole chunks.
    Chunked { allowed: Tensor, chunk: i64, half: i64, padded: i64 },
}

/// Which keys each query sees, in global and in local layers, for one pass.
pub struct Visibility {
    /// `None`: every key (no padding, no documents). Else (B, 1, 1|T, T).
    global: Option<Tensor>,
    local: Local,
}

impl Visibility {
    /// `attention_mask` (B, T) with 1 at real tokens; `documents` (B, T) as in
    /// `MlmBatch`; `half` the local layers' reach either side; `heads` per
    /// layer. Whether every key is real is read back to the host only on the
    /// CPU or outside training (as the BERT layers do).
    pub fn new(attention_mask: &Tensor, documents: Option<&Tensor>, half: i64, heads: i64, train: bool) -> Self {
        let (b, t) = attention_mask.size2().expect("attention_mask is (B, T)");
        let device = attention_mask.device();
        let real = attention_mask.eq(1); // (B, T)
        let may_read = device == Device::Cpu || !train;
        let all_real = documents.is_none() && may_read && real.all().int64_value(&[]) == 1;
        // (B, 1, 1|T, T): real keys, of the query's document.
        let keys = match documents {
            Some(docs) => real.view([b, 1, 1, t]).logical_and(&docs.view([b, 1, t, 1]).eq_tensor(&docs.view([b, 1, 1, t]))),
            None => real.view([b, 1, 1, t]),
        };
        // Without documents every query sees its row's real keys: no row is empty.
        let global = match documents {
            Some(docs) => Some(keys_within(attention_mask, docs)),
            None => (!all_real).then(|| keys.shallow_clone()),
        };
        let chunk = half;
        let local = if t < 16 * half {
            let i = Tensor::arange(t, (Kind::Int64, device));
            let band = (i.unsqueeze(1) - i.unsqueeze(0)).abs().le(half); // (T, T)
            let allowed = if all_real { band.view([1, 1, t, t]) } else { keys.logical_and(&band) };
            Local::Dense(with_self_if_empty(&allowed, &Tensor::eye(t, (Kind::Bool, device))))
        } else {
            let n = (t + chunk - 1) / chunk;
            let padded = n * chunk;
            let span = chunk + 2 * half;
            // Query i of a chunk meets span key j at position (chunk start + j - half).
            let (i, j) = (Tensor::arange(chunk, (Kind::Int64, device)), Tensor::arange(span, (Kind::Int64, device)));
            let offset = j.unsqueeze(0) - i.unsqueeze(1); // (chunk, span)
            let band = offset.ge(0).logical_and(&offset.le(2 * half));
            let own = offset.eq(half);
            // Keys: real (and of the query's document), padded by `half` before
            // and after the chunks, then cut into each chunk's span.
            let spans = |x: &Tensor| x.constant_pad_nd([half, padded - t + half]).unfold(1, span, chunk).view([b, 1, n, 1, span]);
            let mut allowed = spans(&real).logical_and(&band.view([1, 1, 1, chunk, span]));
            if let Some(docs) = documents {
                let key_docs = spans(&(docs + 2)) - 2; // -2 in the padding: no query's document
                let query_docs = docs.constant_pad_nd([0, padded - t]).view([b, 1, n, chunk, 1]);
                allowed = allowed.logical_and(&key_docs.eq_tensor(&query_docs));
            }
            let allowed = with_self_if_empty(&allowed, &own);
            let rows = allowed.size()[0];
            let allowed = allowed.expand([rows, heads, n, chunk, span], false).reshape([rows, heads * n, chunk, span]);
            Local::Chunked { allowed, chunk, half, padded }
        };
        Visibility { global, local }
    }

    /// Attention of a global layer; q, k, v (B, nh, T, hd).
    pub fn global(&self, q: &Tensor, k: &Tensor, v: &Tensor, p: f64, pass: Pass) -> Tensor {
        attend(q, k, v, self.global.as_ref(), p, pass)
    }

    /// Attention of a local layer; q, k, v (B, nh, T, hd).
    pub fn local(&self, q: &Tensor, k: &Tensor, v: &Tensor, p: f64, pass: Pass) -> Tensor {
        match &self.local {
            Local::Dense(allowed) => attend(q, k, v, Some(allowed), p, pass),
            Local::Chunked { allowed, chunk, half, padded } => {
                let (b, nh, t, hd) = q.size4().expect("q is (B, nh, T, hd)");
                let (n, span) = (padded / chunk, chunk + 2 * half);
                let q = q.constant_pad_nd([0, 0, 0, padded - t]).reshape([b, nh * n, *chunk, hd]);
                let spans = |x: &Tensor| {
                    x.constant_pad_nd([0, 0, *half, padded - t + half]) // (B, nh, P + 2h, hd)
                        .unfold(2, span, *chunk) // (B, nh, n, hd, span)
                        .transpose(-1, -2)
                        .reshape([b, nh * n, span, hd])
                };
                let y = attend(&q, &spans(k), &spans(v), Some(allowed), p, pass); // (B, nh × n, chunk, hd)
                y.reshape([b, nh, *padded, hd]).narrow(2, 0, t)
            }
        }
    }
}

/// softmax(q kᵀ / √d) v over the `allowed` keys. Training with attention
/// dropout writes the probabilities out so that dropout draws from the pass's
/// keyed masks; otherwise torch's fused kernel runs.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, allowed: Option<&Tensor>, p: f64, pass: Pass) -> Tensor {
    if pass.train && p > 0.0 {
        let head_dim = *q.size().last().expect("q has a last dim");
        let scores = (q * (1.0 / (head_dim as f64).sqrt())).matmul(&k.transpose(-2, -1));
        let scores = match allowed {
            Some(a) => scores.masked_fill(&a.logical_not(), f64::NEG_INFINITY),
            None => scores,
        };
        return pass.dropout(&scores.softmax(-1, None), p).matmul(v);
    }
    Tensor::scaled_dot_product_attention(q, k, v, allowed, 0.0, false, None, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_encoder::dropout::MaskRng;

    fn eval<'a>(rng: &'a MaskRng) -> Pass<'a> {
        Pass { train: false, rng }
    }

    /// The reference: every query against every key, masked to the window
    /// (and the documents), with the self-if-empty rule.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, docs: Option<&Tensor>, half: i64) -> Tensor {
        let (b, t) = mask.size2().unwrap();
        let i = Tensor::arange(t, (Kind::Int64, Device::Cpu));
        let band = (i.unsqueeze(1) - i.unsqueeze(0)).abs().le(half).view([1, 1, t, t]);
        let mut allowed = mask.eq(1).view([b, 1, 1, t]).logical_and(&band);
        if let Some(d) = docs {
            allowed = allowed.logical_and(&d.view([b, 1, t, 1]).eq_tensor(&d.view([b, 1, 1, t])));
        }
        let allowed = with_self_if_empty(&allowed, &Tensor::eye(t, (Kind::Bool, Device::Cpu)));
        let scores = (q * (1.0 / (q.size()[3] as f64).sqrt())).matmul(&k.transpose(-2, -1));
        scores.masked_fill(&allowed.logical_not(), f64::NEG_INFINITY).softmax(-1, None).matmul(v)
    }

    #[test]
    fn chunked_local_attention_equals_the_masked_full_matrix() {
        tch::manual_seed(0);
        let rng = MaskRng::new(0);
        for (t, half, with_docs) in [(64, 4, false), (61, 4, true), (130, 8, false), (50, 3, true), (37, 3, false), (20, 4, false)] {
            let opts = (Kind::Double, Device::Cpu);
            // Head-major views of (B, T, nh, hd) tensors, as a layer hands them over.
            let heads = || Tensor::randn([2, t, 3, 8], opts).transpose(1, 2);
            let (q, k, v) = (heads(), heads(), heads());
            // Row 1 padded over its last 13 positions: some padded queries see no real key.
            let mask = Tensor::ones([2, t], (Kind::Int64, Device::Cpu));
            let _ = mask.get(1).narrow(0, t - 13, 13).fill_(0);
            let docs = with_docs.then(|| {
                let d = (Tensor::arange(t, (Kind::Int64, Device::Cpu)) / 9).unsqueeze(0).repeat([2, 1]);
                d.where_scalarother(&mask.eq(1), -1)
            });
            let vis = Visibility::new(&mask, docs.as_ref(), half, 3, false);
            assert_eq!(matches!(vis.local, Local::Chunked { .. }), t >= 16 * half);
            let ours = vis.local(&q, &k, &v, 0.0, eval(&rng));
            let want = reference(&q, &k, &v, &mask, docs.as_ref(), half);
            let gap = (ours - want).abs().max().double_value(&[]);
            assert!(gap < 1e-10, "T {t}, half {half}, documents {with_docs}: {gap}");
        }
    }
}

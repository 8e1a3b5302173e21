//! The layers of a post-LayerNorm Transformer encoder (BERT, RoBERTa,
//! DistilBERT), read bottom-up: linear and LayerNorm, attention, one encoder
//! layer, the stack of layers, the MLM head, and the encoder passes these
//! families share ([`MaskedLm`]).
//!
//! Each family names its tensors its own way; the layers take those names
//! ([`LayerNames`], [`HeadNames`]) so that variables sit under exactly the
//! Hugging Face names and checkpoints load without a rename table. Biases and
//! LayerNorm weights live in the no-decay group [`NO_DECAY`].
//!
//! Shortcuts that change no result: the MLM head runs only at labelled
//! positions (sparse prediction); the last layer runs its attention output and
//! feed-forward only there too, since no other position reaches the loss; one
//! matmul projects query, key and value; and dropout masks come from a
//! [`MaskRng`] keyed by the pass's `dropout_key`, with attention written out in
//! training so its dropout uses them as well. bf16 and fp16 come from the
//! runner's autocast: no casts here.

use anyhow::{bail, Result};
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use crate::dropout::MaskRng;
use runner_api::Mode;

/// Optimizer group of biases and LayerNorm weights (no weight decay); every
/// other parameter stays in the var store's default group 0 and takes decay.
pub const NO_DECAY: usize = 1;

pub fn normal(std: f64) -> Init {
    Init::Randn { mean: 0.0, stdev: std }
}

/// `p` followed by a dotted Hugging Face sub-path (`attention.self.query`):
/// tch refuses dots inside one path component.
pub fn sub<'a>(p: &nn::Path<'a>, dotted: &str) -> nn::Path<'a> {
    dotted.split('.').filter(|part| !part.is_empty()).fold(p.clone(), |p, part| &p / part)
}

/// What a forward pass needs besides its input: whether it trains (dropout on)
/// and where this pass's dropout masks come from.
#[derive(Clone, Copy)]
pub struct Pass<'a> {
    pub train: bool,
    pub rng: &'a MaskRng,
}

impl Pass<'_> {
    pub fn dropout(&self, x: &Tensor, p: f64) -> Tensor {
        self.rng.dropout(x, p, self.train)
    }
}

/// The dropout masks of one pass: keyed by the runner's `dropout_key` in
/// training; in eval none are drawn.
pub fn masks_of(mode: Mode) -> MaskRng {
    match mode {
        Mode::Train { dropout_key } => MaskRng::new(dropout_key),
        Mode::Eval => MaskRng::new(0),
    }
}

/// `torch.nn.Linear`, initialised as transformers does (normal weights, zero bias).
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,       // (out, in)
    pub bias: Option<Tensor>, // (out,)
}

impl Linear {
    pub fn new(p: nn::Path, in_dim: i64, out_dim: i64, std: f64) -> Self {
        Self::with_bias(p, in_dim, out_dim, normal(std), true)
    }

    /// A linear layer whose weight starts from `init`, with or without a bias.
    pub fn with_bias(p: nn::Path, in_dim: i64, out_dim: i64, init: Init, bias: bool) -> Self {
        let weight = p.var("weight", &[out_dim, in_dim], init);
        let bias = bias.then(|| p.set_group(NO_DECAY).var("bias", &[out_dim], Init::Const(0.0)));
        Linear { weight, bias }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// `torch.nn.LayerNorm` (weight 1, bias 0), both without weight decay.
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    pub fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        Self::with_bias(p, dim, eps, true)
    }

    /// A LayerNorm with or without its bias (`bias=False` in torch).
    pub fn with_bias(p: nn::Path, dim: i64, eps: f64, bias: bool) -> Self {
        let p = p.set_group(NO_DECAY);
        LayerNorm {
            weight: p.var("weight", &[dim], Init::Const(1.0)),
            bias: bias.then(|| p.var("bias", &[dim], Init::Const(0.0))),
            eps,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let dim = self.weight.size()[0];
        // In float32 even where autocast hands it a bf16 input.
        x.to_kind(Kind::Float).layer_norm([dim], Some(&self.weight), self.bias.as_ref(), self.eps, true)
    }
}

/// The activations transformers names `gelu`, `gelu_new`, `gelu_pytorch_tanh`, `relu`.
pub const ACTIVATIONS: &[&str] = &["gelu", "gelu_new", "gelu_pytorch_tanh", "relu"];

pub fn check_activation(name: &str) -> Result<()> {
    if !ACTIVATIONS.contains(&name) {
        bail!("activation `{name}` is not supported ({})", ACTIVATIONS.join(", "));
    }
    Ok(())
}

pub fn activation(name: &str, x: &Tensor) -> Tensor {
    match name {
        "gelu" => x.gelu("none"),
        "gelu_new" | "gelu_pytorch_tanh" => x.gelu("tanh"),
        "relu" => x.relu(),
        other => unreachable!("activation `{other}` is rejected when the config is checked"),
    }
}

/// Which keys each query may see: all of them (packed data), the real
/// tokens of its sequence, or those of its document.
pub enum KeyMask {
    All,
    /// `keep`: (B, 1, 1|T, T) bool, true at the keys a query sees; `bias`: 0
    /// there, -1e30 elsewhere, added to the scores where attention is written out.
    Padding { keep: Tensor, bias: Tensor },
}

impl KeyMask {
    /// The mask of `attention_mask` (B, T). Whether every key is real is read
    /// back to the host only where that costs no device stall: on the CPU, and
    /// outside training (eval, where it lets CUDA pick its flash kernel). A
    /// training pass on a GPU always takes the padding mask, all true on packed
    /// data: a zero bias on the written-out attention that dropout needs.
    pub fn new(attention_mask: &Tensor, train: bool) -> Self {
        let (b, t) = attention_mask.size2().expect("attention_mask is (B, T)");
        let keep = attention_mask.eq(1).view([b, 1, 1, t]);
        let may_read = attention_mask.device() == tch::Device::Cpu || !train;
        if may_read && keep.all().int64_value(&[]) == 1 {
            return KeyMask::All;
        }
        Self::keeping(keep)
    }

    /// The mask of a row of several documents (`MlmBatch::documents`).
    pub fn within_documents(attention_mask: &Tensor, documents: &Tensor) -> Self {
        Self::keeping(crate::documents::keys_within(attention_mask, documents))
    }

    fn keeping(keep: Tensor) -> Self {
        let bias = keep.logical_not().to_kind(Kind::Float) * -1e30;
        KeyMask::Padding { keep, bias }
    }
}

/// softmax(q k^T / sqrt(d)) v with dropout on the probabilities; q, k, v are (B, nh, T, hd).
/// Training with attention dropout writes it out, on every device, so that
/// dropout draws from `pass.rng` (torch's fused CPU kernel has no dropout, so
/// torch writes it out there as well; the fused CUDA kernels would draw from
/// torch's generator); otherwise `scaled_dot_product_attention` picks its
/// fused kernel.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &KeyMask, p: f64, pass: Pass) -> Tensor {
    let p = if pass.train { p } else { 0.0 };
    if p > 0.0 {
        let head_dim = *q.size().last().expect("q has a last dim");
        let scores = (q * (1.0 / (head_dim as f64).sqrt())).matmul(&k.transpose(-2, -1)); // (B, nh, T, T)
        let scores = match mask {
            KeyMask::All => scores,
            KeyMask::Padding { bias, .. } => scores + bias.to_kind(q.kind()),
        };
        return pass.dropout(&scores.softmax(-1, None), p).matmul(v);
    }
    let keep = match mask {
        KeyMask::All => None,
        KeyMask::Padding { keep, .. } => Some(keep),
    };
    Tensor::scaled_dot_product_attention(q, k, v, keep, p, false, None, false)
}

/// Sizes, activation and dropout of an encoder's layers, whatever its family
/// calls them in `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dims {
    pub hidden: i64,
    pub heads: i64,
    pub intermediate: i64,
    pub act: String,
    /// Dropout after the embeddings and the feed-forward output.
    pub hidden_dropout: f64,
    /// Dropout on the attention probabilities.
    pub attention_dropout: f64,
    /// Dropout after the attention output projection (BERT: `hidden_dropout`; DistilBERT: none).
    pub attention_output_dropout: f64,
    pub layer_norm_eps: f64,
    pub initializer_range: f64,
}

/// Where one layer's tensors sit, relative to the layer (`encoder.layer.N`).
#[derive(Debug, Clone, Copy)]
pub struct LayerNames {
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub attention_output: &'static str,
    pub attention_norm: &'static str,
    pub intermediate: &'static str,
    pub output: &'static str,
    pub output_norm: &'static str,
}

/// BERT's (and RoBERTa's) layer: `attention.{self, output}`, `intermediate`, `output`.
pub const BERT_LAYER: LayerNames = LayerNames {
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attention_output: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    intermediate: "intermediate.dense",
    output: "output.dense",
    output_norm: "output.LayerNorm",
};

/// One post-LayerNorm encoder layer:
/// `x = LN(x + drop(W_o attn(x)))`, then `x = LN(x + drop(W_2 act(W_1 x)))`.
/// Attention uses one fused projection for query, key and value.
#[derive(Debug)]
pub struct EncoderLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    num_heads: i64,
    head_dim: i64,
    act: String,
    attention_dropout: f64,
    attention_output_dropout: f64,
    hidden_dropout: f64,
}

impl EncoderLayer {
    pub fn new(p: nn::Path, d: &Dims, names: &LayerNames) -> Self {
        let (h, std) = (d.hidden, d.initializer_range);
        EncoderLayer {
            query: Linear::new(sub(&p, names.query), h, h, std),
            key: Linear::new(sub(&p, names.key), h, h, std),
            value: Linear::new(sub(&p, names.value), h, h, std),
            attention_output: Linear::new(sub(&p, names.attention_output), h, h, std),
            attention_norm: LayerNorm::new(sub(&p, names.attention_norm), h, d.layer_norm_eps),
            intermediate: Linear::new(sub(&p, names.intermediate), h, d.intermediate, std),
            output: Linear::new(sub(&p, names.output), d.intermediate, h, std),
            output_norm: LayerNorm::new(sub(&p, names.output_norm), h, d.layer_norm_eps),
            num_heads: d.heads,
            head_dim: d.hidden / d.heads,
            act: d.act.clone(),
            attention_dropout: d.attention_dropout,
            attention_output_dropout: d.attention_output_dropout,
            hidden_dropout: d.hidden_dropout,
        }
    }

    /// Multi-head self-attention before its output projection: (B, T, H) -> (B, T, H).
    fn attend(&self, x: &Tensor, mask: &KeyMask, pass: Pass) -> Tensor {
        let (b, t, h) = x.size3().expect("hidden is (B, T, H)");
        // One (H -> 3H) matmul instead of three, with the input cast once.
        let (q, k, v) = (&self.query, &self.key, &self.value);
        let weight = Tensor::cat(&[&q.weight, &k.weight, &v.weight], 0);
        let bias = [&q.bias, &k.bias, &v.bias].map(|b| b.as_ref().expect("BERT's projections have biases"));
        let qkv = x.linear(&weight, Some(&Tensor::cat(&bias, 0))) // (B, T, 3H)
            .view([b, t, 3, self.num_heads, self.head_dim])
            .permute([2, 0, 3, 1, 4]); // (3, B, nh, T, hd)
        let y = attention(&qkv.get(0), &qkv.get(1), &qkv.get(2), mask, self.attention_dropout, pass); // (B, nh, T, hd)
        y.transpose(1, 2).reshape([b, t, h])
    }

    pub fn forward(&self, x: &Tensor, mask: &KeyMask, pass: Pass) -> Tensor {
        let a = self.attend(x, mask, pass); // (B, T, H)
        self.after_attention(&a, x, pass)
    }

    /// The layer's output at the flat positions `at` only (N, H): attention
    /// still reads every key, but the rest runs on N rows instead of B*T.
    pub fn forward_at(&self, x: &Tensor, mask: &KeyMask, at: &Tensor, pass: Pass) -> Tensor {
        let h = *x.size().last().expect("hidden has a last dim");
        let a = self.attend(x, mask, pass).reshape([-1, h]).index_select(0, at); // (N, H)
        self.after_attention(&a, &x.reshape([-1, h]).index_select(0, at), pass)
    }

    /// Attention output projection, residual, feed-forward: row by row.
    fn after_attention(&self, a: &Tensor, x: &Tensor, pass: Pass) -> Tensor {
        let y = pass.dropout(&self.attention_output.forward(a), self.attention_output_dropout);
        let x = self.attention_norm.forward(&(y + x));
        let i = activation(&self.act, &self.intermediate.forward(&x)); // (.., I)
        let y = pass.dropout(&self.output.forward(&i), self.hidden_dropout);
        self.output_norm.forward(&(y + &x))
    }
}

/// Where the MLM head's tensors sit, relative to the head's path.
#[derive(Debug, Clone, Copy)]
pub struct HeadNames {
    pub dense: &'static str,
    pub norm: &'static str,
    /// The decoder's own bias (its weight is the word embeddings).
    pub bias: &'static str,
}

/// The MLM head: dense, activation, LayerNorm, then the decoder tied to the
/// word embeddings plus its own bias.
#[derive(Debug)]
pub struct LmHead {
    dense: Linear,
    layer_norm: LayerNorm,
    bias: Tensor, // (V,)
    act: String,
}

impl LmHead {
    pub fn new(p: nn::Path, names: &HeadNames, d: &Dims, vocab_size: i64, act: &str) -> Self {
        LmHead {
            dense: Linear::new(sub(&p, names.dense), d.hidden, d.hidden, d.initializer_range),
            layer_norm: LayerNorm::new(sub(&p, names.norm), d.hidden, d.layer_norm_eps),
            bias: {
                let (parent, name) = names.bias.rsplit_once('.').unwrap_or(("", names.bias));
                sub(&p, parent).set_group(NO_DECAY).var(name, &[vocab_size], Init::Const(0.0))
            },
            act: act.to_string(),
        }
    }

    /// (N, H) -> (N, V), decoding with the word embedding matrix (tied weights).
    pub fn forward(&self, h: &Tensor, word_embeddings: &Tensor) -> Tensor {
        let h = self.layer_norm.forward(&activation(&self.act, &self.dense.forward(h)));
        h.linear(word_embeddings, Some(&self.bias)).to_kind(Kind::Float) // float32 for the loss
    }
}

/// The stack of encoder layers.
#[derive(Debug)]
pub struct Encoder {
    pub layers: Vec<EncoderLayer>,
}

impl Encoder {
    /// `n` layers at `p / 0`, `p / 1`, ...
    pub fn new(p: nn::Path, n: i64, d: &Dims, names: &LayerNames) -> Self {
        Encoder { layers: (0..n).map(|i| EncoderLayer::new(&p / i, d, names)).collect() }
    }
}

/// A masked LM built of embeddings, an [`Encoder`] and an [`LmHead`] (BERT,
/// RoBERTa, DistilBERT): the passes they share. Every such model is a
/// [`crate::model::Network`].
pub trait MaskedLm {
    /// The embeddings' output (B, T, H), dropout included. `positions` (B, T):
    /// each token's position in its document, when rows hold several.
    fn embed(&self, input_ids: &Tensor, positions: Option<&Tensor>, pass: Pass) -> Tensor;
    fn encoder(&self) -> &Encoder;
    fn head(&self) -> &LmHead;
    /// The word embedding matrix (V, H), the head's tied decoder.
    fn word_embeddings(&self) -> &Tensor;

    /// Encoder output (B, T, H); `documents` as in `MlmBatch`.
    fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor, documents: Option<&Tensor>, mode: Mode) -> Tensor {
        let rng = masks_of(mode);
        let pass = Pass { train: mode.is_train(), rng: &rng };
        let (x, mask) = self.embed_and_mask(input_ids, attention_mask, documents, pass);
        self.encoder().layers.iter().fold(x, |x, layer| layer.forward(&x, &mask, pass))
    }

    /// Encoder output at the flat positions `at` only (N, H); the last layer
    /// runs past attention on those rows alone.
    fn encode_at(&self, input_ids: &Tensor, attention_mask: &Tensor, documents: Option<&Tensor>, at: &Tensor, mode: Mode) -> Tensor {
        let rng = masks_of(mode);
        let pass = Pass { train: mode.is_train(), rng: &rng };
        let (mut x, mask) = self.embed_and_mask(input_ids, attention_mask, documents, pass);
        let Some((last, first)) = self.encoder().layers.split_last() else {
            let h = *x.size().last().expect("hidden has a last dim");
            return x.reshape([-1, h]).index_select(0, at);
        };
        for layer in first {
            x = layer.forward(&x, &mask, pass);
        }
        last.forward_at(&x, &mask, at, pass)
    }

    /// The embeddings and the keys each query sees: within its document, with positions
    /// counted in it, when rows hold several.
    fn embed_and_mask(&self, input_ids: &Tensor, attention_mask: &Tensor, documents: Option<&Tensor>, pass: Pass) -> (Tensor, KeyMask) {
        match documents {
            None => (self.embed(input_ids, None, pass), KeyMask::new(attention_mask, pass.train)),
            Some(docs) => {
                let (_, t) = input_ids.size2().expect("input_ids is (B, T)");
                let positions = crate::documents::positions(t, Some(docs), input_ids.device());
                (self.embed(input_ids, Some(&positions), pass), KeyMask::within_documents(attention_mask, docs))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dropout is linear in its mask, so the written-out training attention
    /// averages to torch's fused attention; padded keys get no weight.
    #[test]
    fn training_attention_averages_to_the_fused_kernel() {
        tch::manual_seed(0);
        let opts = (Kind::Float, tch::Device::Cpu);
        let (q, k) = (Tensor::randn([2, 2, 5, 4], opts), Tensor::randn([2, 2, 5, 4], opts));
        let v = Tensor::randn([2, 2, 5, 4], opts);
        let attention_mask = Tensor::from_slice2(&[[1i64, 1, 1, 1, 1], [1, 1, 1, 0, 0]]);
        // A padded key with a huge value would show any weight it gets.
        let _ = v.narrow(0, 1, 1).narrow(2, 3, 2).fill_(1e3);
        let mask = KeyMask::new(&attention_mask, true);
        assert!(matches!(mask, KeyMask::Padding { .. }));
        let rng = MaskRng::new(1);
        let eval = attention(&q, &k, &v, &mask, 0.1, Pass { train: false, rng: &rng });
        let n = 4000;
        let mut sum = eval.zeros_like();
        for _ in 0..n {
            sum += attention(&q, &k, &v, &mask, 0.1, Pass { train: true, rng: &rng });
        }
        let gap = (sum / n as f64 - &eval).abs().max().double_value(&[]);
        assert!(gap < 0.05, "mean of training attention is {gap} from eval attention");
        assert!(matches!(KeyMask::new(&Tensor::ones([2, 5], (Kind::Int64, tch::Device::Cpu)), true), KeyMask::All));
    }

    #[test]
    fn dotted_names_become_nested_paths() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _ = sub(&(vs.root() / "bert"), "attention.self.query").var("weight", &[1], Init::Const(0.0));
        let _ = sub(&vs.root(), "").var("bias", &[1], Init::Const(0.0));
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(names, ["bert.attention.self.query.weight", "bias"]);
    }
}

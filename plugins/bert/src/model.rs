//! BERT for masked LM in tch, read bottom-up: small blocks first, the full model last.
//!
//! Every struct mirrors one Hugging Face module and is built under the same
//! variable path, so parameter names match `transformers.BertForMaskedLM`
//! exactly (`bert.encoder.layer.0.attention.self.query.weight`, ...) and
//! checkpoints load without a rename table. Biases and LayerNorm weights live
//! in the no-decay group [`NO_DECAY`].
//!
//! Shortcuts that change no result: the MLM head runs only at labelled
//! positions (sparse prediction); the last layer runs its attention output and
//! feed-forward only there too, since no other position reaches the loss; one
//! matmul projects query, key and value; and dropout masks come from a
//! [`MaskRng`] keyed by the pass's `dropout_key`, with attention written out in
//! training so its dropout uses them as well. bf16 and fp16 come from the
//! runner's autocast: no casts here.

use anyhow::Result;
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use crate::config::BertConfig;
use crate::dropout::MaskRng;
use runner_api::{Mode, IGNORE_INDEX};

/// Optimizer group of biases and LayerNorm weights (no weight decay); every
/// other parameter stays in the var store's default group 0 and takes decay.
pub const NO_DECAY: usize = 1;

fn normal(std: f64) -> Init {
    Init::Randn { mean: 0.0, stdev: std }
}

/// What a forward pass needs besides its input: whether it trains (dropout on)
/// and where this pass's dropout masks come from.
#[derive(Clone, Copy)]
pub struct Pass<'a> {
    pub train: bool,
    pub rng: &'a MaskRng,
}

impl Pass<'_> {
    fn dropout(&self, x: &Tensor, p: f64) -> Tensor {
        self.rng.dropout(x, p, self.train)
    }
}

/// `torch.nn.Linear`, initialised as transformers does (normal weights, zero bias).
#[derive(Debug)]
struct Linear {
    weight: Tensor, // (out, in)
    bias: Tensor,   // (out,)
}

impl Linear {
    fn new(p: nn::Path, in_dim: i64, out_dim: i64, cfg: &BertConfig) -> Self {
        let weight = p.var("weight", &[out_dim, in_dim], normal(cfg.initializer_range));
        let bias = p.set_group(NO_DECAY).var("bias", &[out_dim], Init::Const(0.0));
        Linear { weight, bias }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }
}

/// `torch.nn.LayerNorm` (weight 1, bias 0), both without weight decay.
#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        let p = p.set_group(NO_DECAY);
        LayerNorm {
            weight: p.var("weight", &[dim], Init::Const(1.0)),
            bias: p.var("bias", &[dim], Init::Const(0.0)),
            eps,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let dim = self.weight.size()[0];
        // In float32 even where autocast hands it a bf16 input.
        x.to_kind(Kind::Float).layer_norm([dim], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

fn activation(name: &str, x: &Tensor) -> Tensor {
    match name {
        "gelu" => x.gelu("none"),
        "gelu_new" | "gelu_pytorch_tanh" => x.gelu("tanh"),
        "relu" => x.relu(),
        other => unreachable!("hidden_act `{other}` is rejected by BertConfig::check"),
    }
}

// https://github.com/huggingface/transformers/blob/main/src/transformers/models/bert/modeling_bert.py (BertEmbeddings)
#[derive(Debug)]
struct BertEmbeddings {
    word_embeddings: Tensor,       // (V, H)
    position_embeddings: Tensor,   // (P, H)
    token_type_embeddings: Tensor, // (2, H)
    layer_norm: LayerNorm,
    dropout: f64,
}

impl BertEmbeddings {
    fn new(p: nn::Path, cfg: &BertConfig) -> Self {
        let std = cfg.initializer_range;
        let word_embeddings =
            (&p / "word_embeddings").var("weight", &[cfg.vocab_size, cfg.hidden_size], normal(std));
        // transformers zeroes the padding row of a freshly initialised embedding.
        if (0..cfg.vocab_size).contains(&cfg.pad_token_id) {
            tch::no_grad(|| {
                let _ = word_embeddings.get(cfg.pad_token_id).zero_();
            });
        }
        BertEmbeddings {
            word_embeddings,
            position_embeddings: (&p / "position_embeddings").var(
                "weight",
                &[cfg.max_position_embeddings, cfg.hidden_size],
                normal(std),
            ),
            token_type_embeddings: (&p / "token_type_embeddings").var(
                "weight",
                &[cfg.type_vocab_size, cfg.hidden_size],
                normal(std),
            ),
            layer_norm: LayerNorm::new(&p / "LayerNorm", cfg.hidden_size, cfg.layer_norm_eps),
            dropout: cfg.hidden_dropout_prob,
        }
    }

    fn forward(&self, input_ids: &Tensor, pass: Pass) -> Tensor {
        let (_, t) = input_ids.size2().expect("input_ids is (B, T)");
        let words = Tensor::embedding(&self.word_embeddings, input_ids, -1, false, false); // (B, T, H)
        // token_type_ids are all zero for single-segment MLM.
        let position_and_type = self.position_embeddings.narrow(0, 0, t) + self.token_type_embeddings.get(0); // (T, H)
        pass.dropout(&self.layer_norm.forward(&(words + position_and_type)), self.dropout)
    }
}

/// Which keys each query may see: all of them (packed data), or the real
/// tokens of its sequence.
enum KeyMask {
    All,
    /// `keep`: (B, 1, 1, T) bool, true at real tokens; `bias`: 0 there, -1e30
    /// elsewhere, added to the scores where attention is written out.
    Padding { keep: Tensor, bias: Tensor },
}

impl KeyMask {
    fn new(attention_mask: &Tensor) -> Self {
        let (b, t) = attention_mask.size2().expect("attention_mask is (B, T)");
        let keep = attention_mask.eq(1).view([b, 1, 1, t]);
        if keep.all().int64_value(&[]) == 1 {
            return KeyMask::All;
        }
        let bias = keep.logical_not().to_kind(Kind::Float) * -1e30;
        KeyMask::Padding { keep, bias }
    }
}

/// softmax(q k^T / sqrt(d)) v with dropout on the probabilities; q, k, v are (B, nh, T, hd).
/// Training on the CPU writes it out so that dropout draws from `pass.rng`
/// (torch's fused CPU kernel has no dropout, so torch writes it out as well);
/// otherwise `scaled_dot_product_attention` picks its fused kernel.
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &KeyMask, p: f64, pass: Pass) -> Tensor {
    let p = if pass.train { p } else { 0.0 };
    if p > 0.0 && q.device() == tch::Device::Cpu {
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

// BertSelfAttention: one fused projection for query, key and value.
#[derive(Debug)]
struct BertSelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    num_heads: i64,
    head_dim: i64,
    dropout: f64,
}

impl BertSelfAttention {
    fn new(p: nn::Path, cfg: &BertConfig) -> Self {
        let h = cfg.hidden_size;
        BertSelfAttention {
            query: Linear::new(&p / "query", h, h, cfg),
            key: Linear::new(&p / "key", h, h, cfg),
            value: Linear::new(&p / "value", h, h, cfg),
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            dropout: cfg.attention_probs_dropout_prob,
        }
    }

    fn forward(&self, x: &Tensor, mask: &KeyMask, pass: Pass) -> Tensor {
        let (b, t, h) = x.size3().expect("hidden is (B, T, H)");
        // One (H -> 3H) matmul instead of three, with the input cast once.
        let (q, k, v) = (&self.query, &self.key, &self.value);
        let weight = Tensor::cat(&[&q.weight, &k.weight, &v.weight], 0);
        let bias = Tensor::cat(&[&q.bias, &k.bias, &v.bias], 0);
        let qkv = x.linear(&weight, Some(&bias)) // (B, T, 3H)
            .view([b, t, 3, self.num_heads, self.head_dim])
            .permute([2, 0, 3, 1, 4]); // (3, B, nh, T, hd)
        let y = attention(&qkv.get(0), &qkv.get(1), &qkv.get(2), mask, self.dropout, pass); // (B, nh, T, hd)
        y.transpose(1, 2).reshape([b, t, h])
    }
}

// BertSelfOutput and BertOutput share this shape: dense -> dropout -> residual -> LayerNorm.
#[derive(Debug)]
struct DenseResidualNorm {
    dense: Linear,
    layer_norm: LayerNorm,
    dropout: f64,
}

impl DenseResidualNorm {
    fn new(p: nn::Path, in_dim: i64, cfg: &BertConfig) -> Self {
        DenseResidualNorm {
            dense: Linear::new(&p / "dense", in_dim, cfg.hidden_size, cfg),
            layer_norm: LayerNorm::new(&p / "LayerNorm", cfg.hidden_size, cfg.layer_norm_eps),
            dropout: cfg.hidden_dropout_prob,
        }
    }

    fn forward(&self, x: &Tensor, residual: &Tensor, pass: Pass) -> Tensor {
        let y = pass.dropout(&self.dense.forward(x), self.dropout);
        self.layer_norm.forward(&(y + residual))
    }
}

// BertLayer: attention.{self, output}, intermediate, output.
#[derive(Debug)]
struct BertLayer {
    attention: BertSelfAttention,
    attention_output: DenseResidualNorm,
    intermediate: Linear,
    output: DenseResidualNorm,
    act: String,
}

impl BertLayer {
    fn new(p: nn::Path, cfg: &BertConfig) -> Self {
        let attn = &p / "attention";
        BertLayer {
            attention: BertSelfAttention::new(&attn / "self", cfg),
            attention_output: DenseResidualNorm::new(&attn / "output", cfg.hidden_size, cfg),
            intermediate: Linear::new(&p / "intermediate" / "dense", cfg.hidden_size, cfg.intermediate_size, cfg),
            output: DenseResidualNorm::new(&p / "output", cfg.intermediate_size, cfg),
            act: cfg.hidden_act.clone(),
        }
    }

    fn forward(&self, x: &Tensor, mask: &KeyMask, pass: Pass) -> Tensor {
        let a = self.attention.forward(x, mask, pass); // (B, T, H)
        self.after_attention(&a, x, pass)
    }

    /// The layer's output at the flat positions `at` only (N, H): attention
    /// still reads every key, but the rest runs on N rows instead of B*T.
    fn forward_at(&self, x: &Tensor, mask: &KeyMask, at: &Tensor, pass: Pass) -> Tensor {
        let h = *x.size().last().expect("hidden has a last dim");
        let a = self.attention.forward(x, mask, pass).reshape([-1, h]).index_select(0, at); // (N, H)
        self.after_attention(&a, &x.reshape([-1, h]).index_select(0, at), pass)
    }

    /// Attention output projection, residual, feed-forward: row by row.
    fn after_attention(&self, a: &Tensor, x: &Tensor, pass: Pass) -> Tensor {
        let x = self.attention_output.forward(a, x, pass);
        let i = activation(&self.act, &self.intermediate.forward(&x)); // (.., I)
        self.output.forward(&i, &x, pass)
    }
}

// BertLMPredictionHead: transform (dense, act, LayerNorm) then the tied decoder + bias.
#[derive(Debug)]
struct BertLmHead {
    dense: Linear,
    layer_norm: LayerNorm,
    bias: Tensor, // (V,) cls.predictions.bias
    act: String,
}

impl BertLmHead {
    fn new(p: nn::Path, cfg: &BertConfig) -> Self {
        let t = &p / "transform";
        BertLmHead {
            dense: Linear::new(&t / "dense", cfg.hidden_size, cfg.hidden_size, cfg),
            layer_norm: LayerNorm::new(&t / "LayerNorm", cfg.hidden_size, cfg.layer_norm_eps),
            bias: p.set_group(NO_DECAY).var("bias", &[cfg.vocab_size], Init::Const(0.0)),
            act: cfg.hidden_act.clone(),
        }
    }

    /// (N, H) -> (N, V), decoding with the word embedding matrix (tied weights).
    fn forward(&self, h: &Tensor, word_embeddings: &Tensor) -> Tensor {
        let h = self.layer_norm.forward(&activation(&self.act, &self.dense.forward(h)));
        h.linear(word_embeddings, Some(&self.bias)).to_kind(Kind::Float) // float32 for the loss
    }
}

/// The dropout masks of one pass: keyed by the runner's `dropout_key` in
/// training; in eval none are drawn.
fn masks_of(mode: Mode) -> MaskRng {
    match mode {
        Mode::Train { dropout_key } => MaskRng::new(dropout_key),
        Mode::Eval => MaskRng::new(0),
    }
}

/// `transformers.BertForMaskedLM`: `bert.{embeddings, encoder}` and `cls.predictions`.
#[derive(Debug)]
pub struct BertForMaskedLm {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    head: BertLmHead,
}

impl BertForMaskedLm {
    pub fn new(root: &nn::Path, cfg: &BertConfig) -> Self {
        let bert = root / "bert";
        let layer_path = &bert / "encoder" / "layer";
        BertForMaskedLm {
            embeddings: BertEmbeddings::new(&bert / "embeddings", cfg),
            layers: (0..cfg.num_hidden_layers).map(|i| BertLayer::new(&layer_path / i, cfg)).collect(),
            head: BertLmHead::new(root / "cls" / "predictions", cfg),
        }
    }

    /// Encoder output (B, T, H).
    pub fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor, mode: Mode) -> Tensor {
        let rng = masks_of(mode);
        let (pass, mask) = (Pass { train: mode.is_train(), rng: &rng }, KeyMask::new(attention_mask));
        self.layers.iter().fold(self.embeddings.forward(input_ids, pass), |x, layer| layer.forward(&x, &mask, pass))
    }

    /// Encoder output at the flat positions `at` only (N, H); the last layer
    /// runs past attention on those rows alone.
    fn encode_at(&self, input_ids: &Tensor, attention_mask: &Tensor, at: &Tensor, mode: Mode) -> Tensor {
        let rng = masks_of(mode);
        let (pass, mask) = (Pass { train: mode.is_train(), rng: &rng }, KeyMask::new(attention_mask));
        let mut x = self.embeddings.forward(input_ids, pass);
        let Some((last, first)) = self.layers.split_last() else {
            let h = *x.size().last().expect("hidden has a last dim");
            return x.reshape([-1, h]).index_select(0, at);
        };
        for layer in first {
            x = layer.forward(&x, &mask, pass);
        }
        last.forward_at(&x, &mask, at, pass)
    }

    /// Logits at every position (B, T, V).
    pub fn logits(&self, input_ids: &Tensor, attention_mask: &Tensor, mode: Mode) -> Tensor {
        let h = self.encode(input_ids, attention_mask, mode);
        self.head.forward(&h, &self.embeddings.word_embeddings)
    }

    /// Sparse prediction: the head runs only where `labels != IGNORE_INDEX`.
    /// Returns (loss, logits (N, V), labels (N,)).
    pub fn masked_lm(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        labels: &Tensor,
        mode: Mode,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let labels = labels.f_reshape([-1])?; // (B*T,)
        let at = labels.f_ne(IGNORE_INDEX)?.f_nonzero()?.f_squeeze_dim(1)?; // (N,)
        let picked = self.encode_at(input_ids, attention_mask, &at, mode); // (N, H)
        let labels = labels.f_index_select(0, &at)?; // (N,)
        let logits = self.head.forward(&picked, &self.embeddings.word_embeddings); // (N, V)
        let loss = if at.numel() == 0 {
            // No labelled token in this batch: a zero that still belongs to the graph.
            logits.sum(Kind::Float) * 0.0
        } else {
            logits.f_cross_entropy_loss::<Tensor>(&labels, None, tch::Reduction::Mean, IGNORE_INDEX, 0.0)?
        };
        Ok((loss, logits, labels))
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
        let mask = KeyMask::new(&attention_mask);
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
        assert!(matches!(KeyMask::new(&Tensor::ones([2, 5], (Kind::Int64, tch::Device::Cpu))), KeyMask::All));
    }
}

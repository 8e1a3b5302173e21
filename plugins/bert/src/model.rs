//! BERT for masked LM in tch, read bottom-up: small blocks first, the full model last.
//!
//! Every struct mirrors one Hugging Face module and is built under the same
//! variable path, so parameter names match `transformers.BertForMaskedLM`
//! exactly (`bert.encoder.layer.0.attention.self.query.weight`, ...) and
//! checkpoints load without a rename table. Biases and LayerNorm weights live
//! in the no-decay group [`NO_DECAY`].

use anyhow::Result;
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use crate::config::BertConfig;
use runner_api::IGNORE_INDEX;

/// Optimizer group of parameters that take weight decay.
pub const DECAY: usize = 0;
/// Optimizer group of biases and LayerNorm weights (no weight decay).
pub const NO_DECAY: usize = 1;

fn normal(std: f64) -> Init {
    Init::Randn { mean: 0.0, stdev: std }
}

/// `x @ weight.T + bias` in the compute dtype: float32 weights are cast for
/// the matmul (bf16 autocast, done by hand since libtorch's CPU autocast is
/// not reachable from tch); gradients flow back to the float32 weights.
fn linear_in(x: &Tensor, weight: &Tensor, bias: &Tensor, compute: Kind) -> Tensor {
    if compute == Kind::Float {
        x.linear(weight, Some(bias))
    } else {
        x.to_kind(compute).linear(&weight.to_kind(compute), Some(&bias.to_kind(compute)))
    }
}

/// `torch.nn.Linear`, initialised as transformers does (normal weights, zero bias).
#[derive(Debug)]
struct Linear {
    weight: Tensor, // (out, in)
    bias: Tensor,   // (out,)
    compute: Kind,
}

impl Linear {
    fn new(p: nn::Path, in_dim: i64, out_dim: i64, cfg: &BertConfig) -> Self {
        let weight = p.var("weight", &[out_dim, in_dim], normal(cfg.initializer_range));
        let bias = p.set_group(NO_DECAY).var("bias", &[out_dim], Init::Const(0.0));
        Linear { weight, bias, compute: cfg.compute_kind() }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        linear_in(x, &self.weight, &self.bias, self.compute)
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
        // Always in float32, as autocast does.
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

    fn forward(&self, input_ids: &Tensor, train: bool) -> Tensor {
        let (_, t) = input_ids.size2().expect("input_ids is (B, T)");
        let words = Tensor::embedding(&self.word_embeddings, input_ids, -1, false, false); // (B, T, H)
        let positions = self.position_embeddings.narrow(0, 0, t); // (T, H)
        // token_type_ids are all zero for single-segment MLM.
        let token_type = self.token_type_embeddings.get(0); // (H,)
        let x = words + positions + token_type;
        self.layer_norm.forward(&x).dropout(self.dropout, train)
    }
}

// BertSelfAttention, computed with scaled_dot_product_attention and a padding mask.
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

    /// `keep`: (B, 1, 1, T) bool, true where the key is a real token.
    fn forward(&self, x: &Tensor, keep: &Tensor, train: bool) -> Tensor {
        let (b, t, h) = x.size3().expect("hidden is (B, T, H)");
        let split = |y: Tensor| y.view([b, t, self.num_heads, self.head_dim]).transpose(1, 2); // (B, nh, T, hd)
        let q = split(self.query.forward(x));
        let k = split(self.key.forward(x));
        let v = split(self.value.forward(x));
        let p = if train { self.dropout } else { 0.0 };
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(keep), p, false, None, false); // (B, nh, T, hd)
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

    fn forward(&self, x: &Tensor, residual: &Tensor, train: bool) -> Tensor {
        let y = self.dense.forward(x).dropout(self.dropout, train);
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

    fn forward(&self, x: &Tensor, keep: &Tensor, train: bool) -> Tensor {
        let a = self.attention.forward(x, keep, train);
        let x = self.attention_output.forward(&a, x, train); // (B, T, H)
        let i = activation(&self.act, &self.intermediate.forward(&x)); // (B, T, I)
        self.output.forward(&i, &x, train)
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
        linear_in(&h, word_embeddings, &self.bias, self.dense.compute).to_kind(Kind::Float)
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
    pub fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        let (b, t) = input_ids.size2().expect("input_ids is (B, T)");
        let keep = attention_mask.eq(1).view([b, 1, 1, t]); // (B, 1, 1, T)
        let mut x = self.embeddings.forward(input_ids, train);
        for layer in &self.layers {
            x = layer.forward(&x, &keep, train);
        }
        x
    }

    /// Logits at every position (B, T, V).
    pub fn logits(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        let h = self.encode(input_ids, attention_mask, train);
        self.head.forward(&h, &self.embeddings.word_embeddings)
    }

    /// Sparse prediction: the head runs only where `labels != IGNORE_INDEX`.
    /// Returns (loss, logits (N, V), labels (N,)).
    pub fn masked_lm(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        labels: &Tensor,
        train: bool,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let h = self.encode(input_ids, attention_mask, train); // (B, T, H)
        let hidden = *h.size().last().expect("hidden has a last dim");
        let labels = labels.f_reshape([-1])?; // (B*T,)
        let at = labels.f_ne(IGNORE_INDEX)?.f_nonzero()?.f_squeeze_dim(1)?; // (N,)
        let picked = h.f_reshape([-1, hidden])?.f_index_select(0, &at)?; // (N, H)
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

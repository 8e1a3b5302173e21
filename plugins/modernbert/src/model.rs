//! ModernBERT for masked LM in tch, under `transformers.ModernBertForMaskedLM`'s
//! names: `model.embeddings.{tok_embeddings, norm}`, `model.layers.N.{attn_norm,
//! attn.Wqkv, attn.Wo, mlp_norm, mlp.Wi, mlp.Wo}`, `model.final_norm`,
//! `head.{dense, norm}` and `decoder.bias` (the decoder's weight is the token
//! embeddings).
//!
//! A pre-LayerNorm encoder: layer 0 has no attention norm (the embeddings'
//! norm serves). Rotary positions (one theta for global layers, another for
//! local ones), GeGLU feed-forward, biases and norm biases as the config says.
//! Which keys a layer sees is `attention.rs`'s.
//!
//! As in the BERT layers: dropout masks come from the pass's keyed
//! [`MaskRng`](runner_encoder::dropout::MaskRng); the head runs only at
//! labelled rows, and so does the last layer past its attention.

use anyhow::Result;
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use runner_api::Mode;
use runner_encoder::layers::{activation, masks_of, LayerNorm, Linear, Pass, NO_DECAY};
use runner_encoder::model::{Inputs, Network};

use runner_encoder::documents::positions;

use crate::attention::{Rotary, Visibility};
use crate::config::ModernBertConfig;

/// transformers' initialisation: a normal of `std` truncated at
/// `cutoff * std`, drawn again where it falls outside.
fn truncated_normal(p: &nn::Path, name: &str, shape: &[i64], std: f64, cutoff: f64) -> Tensor {
    let var = p.var(name, shape, Init::Const(0.0));
    tch::no_grad(|| {
        let bound = cutoff * std;
        let mut x = Tensor::randn(shape, (Kind::Float, var.device())) * std;
        if bound > 0.0 {
            for _ in 0..100 {
                let outside = x.abs().gt(bound);
                if outside.any().int64_value(&[]) == 0 {
                    break;
                }
                x = x.where_self(&outside.logical_not(), &(Tensor::randn(shape, (Kind::Float, var.device())) * std));
            }
            x = x.clamp(-bound, bound);
        }
        var.shallow_clone().copy_(&x);
    });
    var
}

/// A linear layer initialised as transformers initialises ModernBERT's.
fn linear(p: nn::Path, in_dim: i64, out_dim: i64, bias: bool, std: f64, cfg: &ModernBertConfig) -> Linear {
    let weight = truncated_normal(&p, "weight", &[out_dim, in_dim], std, cfg.initializer_cutoff_factor);
    let bias = bias.then(|| p.set_group(NO_DECAY).var("bias", &[out_dim], Init::Const(0.0)));
    Linear { weight, bias }
}

fn norm(p: nn::Path, cfg: &ModernBertConfig) -> LayerNorm {
    LayerNorm::with_bias(p, cfg.hidden_size, cfg.norm_eps, cfg.norm_bias)
}

/// One pre-LayerNorm layer: `x + drop(Wo attn(norm(x)))`, then `x + mlp(norm(x))`.
#[derive(Debug)]
struct Layer {
    attn_norm: Option<LayerNorm>,
    wqkv: Linear,
    wo: Linear,
    mlp_norm: LayerNorm,
    wi: Linear,
    mlp_wo: Linear,
    global: bool,
    heads: i64,
    act: String,
    attention_dropout: f64,
    mlp_dropout: f64,
}

/// What every layer of one pass shares: its dropout masks, the keys each
/// query sees, and the rotary angles of each layer type.
struct Context<'a> {
    pass: Pass<'a>,
    visibility: Visibility,
    global_rotary: Rotary,
    local_rotary: Rotary,
}

impl Layer {
    fn new(p: nn::Path, i: usize, cfg: &ModernBertConfig) -> Self {
        let (h, std) = (cfg.hidden_size, cfg.initializer_range);
        let out_std = std / (2.0 * cfg.num_hidden_layers as f64).sqrt();
        let attn = &p / "attn";
        let mlp = &p / "mlp";
        Layer {
            attn_norm: (i > 0).then(|| norm(&p / "attn_norm", cfg)),
            wqkv: linear(&attn / "Wqkv", h, 3 * h, cfg.attention_bias, std, cfg),
            wo: linear(&attn / "Wo", h, h, cfg.attention_bias, out_std, cfg),
            mlp_norm: norm(&p / "mlp_norm", cfg),
            wi: linear(&mlp / "Wi", h, 2 * cfg.intermediate_size, cfg.mlp_bias, std, cfg),
            mlp_wo: linear(&mlp / "Wo", cfg.intermediate_size, h, cfg.mlp_bias, out_std, cfg),
            global: cfg.is_global(i),
            heads: cfg.num_attention_heads,
            act: cfg.hidden_activation.clone(),
            attention_dropout: cfg.attention_dropout,
            mlp_dropout: cfg.mlp_dropout,
        }
    }

    /// Attention before its output projection: (B, T, H) -> (B, T, H).
    fn attend(&self, x: &Tensor, cx: &Context) -> Tensor {
        let x = match &self.attn_norm {
            Some(n) => n.forward(x),
            None => x.shallow_clone(),
        };
        let (b, t, h) = x.size3().expect("hidden is (B, T, H)");
        let qkv = self.wqkv.forward(&x).view([b, t, 3, self.heads, h / self.heads]).permute([2, 0, 3, 1, 4]); // (3, B, nh, T, hd)
        let rotary = if self.global { &cx.global_rotary } else { &cx.local_rotary };
        let (q, k, v) = (rotary.apply(&qkv.get(0)), rotary.apply(&qkv.get(1)), qkv.get(2));
        let y = if self.global {
            cx.visibility.global(&q, &k, &v, self.attention_dropout, cx.pass)
        } else {
            cx.visibility.local(&q, &k, &v, self.attention_dropout, cx.pass)
        };
        y.transpose(1, 2).reshape([b, t, h])
    }

    fn forward(&self, x: &Tensor, cx: &Context) -> Tensor {
        let a = self.attend(x, cx);
        self.after_attention(&a, x, cx.pass)
    }

    /// The layer's output at the flat positions `at` only (N, H).
    fn forward_at(&self, x: &Tensor, at: &Tensor, cx: &Context) -> Tensor {
        let h = *x.size().last().expect("hidden has a last dim");
        let a = self.attend(x, cx).reshape([-1, h]).index_select(0, at);
        self.after_attention(&a, &x.reshape([-1, h]).index_select(0, at), cx.pass)
    }

    /// Output projection, residual, GeGLU feed-forward, residual: row by row.
    fn after_attention(&self, a: &Tensor, x: &Tensor, pass: Pass) -> Tensor {
        let x = x + pass.dropout(&self.wo.forward(a), self.attention_dropout);
        let gates = self.wi.forward(&self.mlp_norm.forward(&x)).chunk(2, -1); // input, gate
        let y = pass.dropout(&(activation(&self.act, &gates[0]) * &gates[1]), self.mlp_dropout);
        x + self.mlp_wo.forward(&y)
    }
}

/// `transformers.ModernBertForMaskedLM`.
#[derive(Debug)]
pub struct ModernBertForMaskedLm {
    tok_embeddings: Tensor, // (V, H)
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    head_dense: Linear,
    head_norm: LayerNorm,
    decoder_bias: Option<Tensor>, // (V,)
    cfg: ModernBertConfig,
}

impl ModernBertForMaskedLm {
    pub fn new(root: &nn::Path, cfg: &ModernBertConfig) -> Self {
        let model = root / "model";
        let embeddings = &model / "embeddings";
        let std = cfg.initializer_range;
        let tok_embeddings =
            truncated_normal(&(&embeddings / "tok_embeddings"), "weight", &[cfg.vocab_size, cfg.hidden_size], std, cfg.initializer_cutoff_factor);
        tch::no_grad(|| {
            if (0..cfg.vocab_size).contains(&cfg.pad_token_id) {
                let _ = tok_embeddings.get(cfg.pad_token_id).zero_();
            }
        });
        let out_std = std / (2.0 * cfg.num_hidden_layers as f64).sqrt();
        ModernBertForMaskedLm {
            tok_embeddings,
            embedding_norm: norm(&embeddings / "norm", cfg),
            layers: (0..cfg.num_hidden_layers as usize).map(|i| Layer::new(&model / "layers" / i, i, cfg)).collect(),
            final_norm: norm(&model / "final_norm", cfg),
            head_dense: linear(root / "head" / "dense", cfg.hidden_size, cfg.hidden_size, cfg.classifier_bias, out_std, cfg),
            head_norm: norm(root / "head" / "norm", cfg),
            decoder_bias: cfg
                .decoder_bias
                .then(|| (root / "decoder").set_group(NO_DECAY).var("bias", &[cfg.vocab_size], Init::Const(0.0))),
            cfg: cfg.clone(),
        }
    }

    /// Embeddings, the layers' shared context, and every layer but the last.
    fn below_last<'a>(&self, x: &Inputs, pass: Pass<'a>) -> (Tensor, Context<'a>) {
        let (_, t) = x.input_ids.size2().expect("input_ids is (B, T)");
        let device = x.input_ids.device();
        let words = Tensor::embedding(&self.tok_embeddings, x.input_ids, self.cfg.pad_token_id, false, false);
        let mut h = pass.dropout(&self.embedding_norm.forward(&words), self.cfg.embedding_dropout);
        let positions = positions(t, x.documents, device);
        let head_dim = self.cfg.head_dim();
        let cx = Context {
            pass,
            visibility: Visibility::new(x.attention_mask, x.documents, self.cfg.local_attention / 2, self.cfg.num_attention_heads, pass.train),
            global_rotary: Rotary::new(&positions, head_dim, self.cfg.global_rope_theta),
            local_rotary: Rotary::new(&positions, head_dim, self.cfg.local_rope_theta),
        };
        if let Some((_, first)) = self.layers.split_last() {
            for layer in first {
                h = layer.forward(&h, &cx);
            }
        }
        (h, cx)
    }
}

impl Network for ModernBertForMaskedLm {
    fn encode(&self, x: &Inputs, mode: Mode) -> Result<Tensor> {
        let rng = masks_of(mode);
        let (h, cx) = self.below_last(x, Pass { train: mode.is_train(), rng: &rng });
        let h = match self.layers.last() {
            Some(last) => last.forward(&h, &cx),
            None => h,
        };
        Ok(self.final_norm.forward(&h))
    }

    fn encode_at(&self, x: &Inputs, at: &Tensor, mode: Mode) -> Result<Tensor> {
        let rng = masks_of(mode);
        let (h, cx) = self.below_last(x, Pass { train: mode.is_train(), rng: &rng });
        let h = match self.layers.last() {
            Some(last) => last.forward_at(&h, at, &cx),
            None => h.reshape([-1, self.cfg.hidden_size]).index_select(0, at),
        };
        Ok(self.final_norm.forward(&h))
    }

    fn predict(&self, h: &Tensor) -> Tensor {
        let h = self.head_norm.forward(&activation(&self.cfg.classifier_activation, &self.head_dense.forward(h)));
        h.linear(&self.tok_embeddings, self.decoder_bias.as_ref()).to_kind(Kind::Float) // float32 for the loss
    }

    fn reads_documents(&self) -> bool {
        true
    }
}

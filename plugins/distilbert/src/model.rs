//! DistilBERT for masked LM in tch: DistilBERT's embeddings and names on the
//! shared encoder layers (`runner_encoder::layers`), which hold attention, the
//! feed-forward, keyed dropout and the sparse masked-LM pass.
//!
//! The variables sit under `transformers.DistilBertForMaskedLM`'s names
//! (`distilbert.transformer.layer.0.attention.q_lin.weight`, `vocab_transform.weight`, ...).
//! The layer is BERT's post-LayerNorm layer under other names, without
//! dropout after the attention output; the embeddings have no token types.

use tch::nn;
use tch::Tensor;

use runner_encoder::layers::{normal, Encoder, HeadNames, LayerNames, LayerNorm, LmHead, MaskedLm, Pass};

use crate::config::{DistilBertConfig, LAYER_NORM_EPS};

// https://github.com/huggingface/transformers/blob/main/src/transformers/models/distilbert/modeling_distilbert.py (Embeddings)
#[derive(Debug)]
struct Embeddings {
    word_embeddings: Tensor,     // (V, H)
    position_embeddings: Tensor, // (P, H)
    layer_norm: LayerNorm,
    dropout: f64,
}

impl Embeddings {
    fn new(p: nn::Path, cfg: &DistilBertConfig) -> Self {
        let std = cfg.initializer_range;
        let word_embeddings = (&p / "word_embeddings").var("weight", &[cfg.vocab_size, cfg.dim], normal(std));
        // transformers zeroes the padding row of a freshly initialised embedding.
        if (0..cfg.vocab_size).contains(&cfg.pad_token_id) {
            tch::no_grad(|| {
                let _ = word_embeddings.get(cfg.pad_token_id).zero_();
            });
        }
        Embeddings {
            word_embeddings,
            position_embeddings: (&p / "position_embeddings").var(
                "weight",
                &[cfg.max_position_embeddings, cfg.dim],
                normal(std),
            ),
            layer_norm: LayerNorm::new(&p / "LayerNorm", cfg.dim, LAYER_NORM_EPS),
            dropout: cfg.dropout,
        }
    }

    fn forward(&self, input_ids: &Tensor, positions: Option<&Tensor>, pass: Pass) -> Tensor {
        let (_, t) = input_ids.size2().expect("input_ids is (B, T)");
        let words = Tensor::embedding(&self.word_embeddings, input_ids, -1, false, false); // (B, T, H)
        let x = match positions {
            Some(p) => words + Tensor::embedding(&self.position_embeddings, p, -1, false, false),
            None => words + self.position_embeddings.narrow(0, 0, t),
        }; // (B, T, H)
        pass.dropout(&self.layer_norm.forward(&x), self.dropout)
    }
}

/// TransformerBlock: `attention.{q,k,v,out}_lin`, `sa_layer_norm`, `ffn.lin{1,2}`, `output_layer_norm`.
const DISTILBERT_LAYER: LayerNames = LayerNames {
    query: "attention.q_lin",
    key: "attention.k_lin",
    value: "attention.v_lin",
    attention_output: "attention.out_lin",
    attention_norm: "sa_layer_norm",
    intermediate: "ffn.lin1",
    output: "ffn.lin2",
    output_norm: "output_layer_norm",
};

/// The MLM head: `vocab_transform`, activation, `vocab_layer_norm`, then
/// `vocab_projector` (weight tied to the word embeddings, its own bias).
const DISTILBERT_HEAD: HeadNames =
    HeadNames { dense: "vocab_transform", norm: "vocab_layer_norm", bias: "vocab_projector.bias" };

/// `transformers.DistilBertForMaskedLM`: `distilbert.{embeddings, transformer}`
/// and the `vocab_*` head at the root. The passes are [`MaskedLm`]'s.
#[derive(Debug)]
pub struct DistilBertForMaskedLm {
    embeddings: Embeddings,
    encoder: Encoder,
    head: LmHead,
}

impl DistilBertForMaskedLm {
    pub fn new(root: &nn::Path, cfg: &DistilBertConfig) -> Self {
        let distilbert = root / "distilbert";
        let dims = cfg.dims();
        DistilBertForMaskedLm {
            embeddings: Embeddings::new(&distilbert / "embeddings", cfg),
            encoder: Encoder::new(&distilbert / "transformer" / "layer", cfg.n_layers, &dims, &DISTILBERT_LAYER),
            head: LmHead::new(root.clone(), &DISTILBERT_HEAD, &dims, cfg.vocab_size, &cfg.activation),
        }
    }
}

impl MaskedLm for DistilBertForMaskedLm {
    fn embed(&self, input_ids: &Tensor, positions: Option<&Tensor>, pass: Pass) -> Tensor {
        self.embeddings.forward(input_ids, positions, pass)
    }
    fn encoder(&self) -> &Encoder {
        &self.encoder
    }
    fn head(&self) -> &LmHead {
        &self.head
    }
    fn word_embeddings(&self) -> &Tensor {
        &self.embeddings.word_embeddings
    }
}

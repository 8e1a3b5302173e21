//! BERT for masked LM in tch: BERT's embeddings and names on the shared
//! encoder layers (`runner_encoder::layers`), which hold the attention, the
//! feed-forward, keyed dropout and the sparse masked-LM pass.
//!
//! Every struct mirrors one Hugging Face module and is built under the same
//! variable path, so parameter names match `transformers.BertForMaskedLM`
//! exactly (`bert.encoder.layer.0.attention.self.query.weight`, ...) and
//! checkpoints load without a rename table.

use tch::nn;
use tch::Tensor;

use runner_encoder::config::BertConfig;
use runner_encoder::layers::{normal, Encoder, HeadNames, LayerNorm, LmHead, MaskedLm, Pass, BERT_LAYER};

pub use runner_encoder::layers::NO_DECAY;

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

    fn forward(&self, input_ids: &Tensor, positions: Option<&Tensor>, pass: Pass) -> Tensor {
        let (_, t) = input_ids.size2().expect("input_ids is (B, T)");
        let words = Tensor::embedding(&self.word_embeddings, input_ids, -1, false, false); // (B, T, H)
        let positions = match positions {
            Some(p) => Tensor::embedding(&self.position_embeddings, p, -1, false, false), // (B, T, H)
            None => self.position_embeddings.narrow(0, 0, t),                            // (T, H)
        };
        // token_type_ids are all zero for single-segment MLM.
        pass.dropout(&self.layer_norm.forward(&(words + positions + self.token_type_embeddings.get(0))), self.dropout)
    }
}

/// BertLMPredictionHead: `transform.{dense, LayerNorm}`, then the tied decoder + `bias`.
const BERT_HEAD: HeadNames = HeadNames { dense: "transform.dense", norm: "transform.LayerNorm", bias: "bias" };

/// `transformers.BertForMaskedLM`: `bert.{embeddings, encoder}` and `cls.predictions`.
/// The passes (`encode`, `logits`, `masked_lm`) are [`MaskedLm`]'s.
#[derive(Debug)]
pub struct BertForMaskedLm {
    embeddings: BertEmbeddings,
    encoder: Encoder,
    head: LmHead,
}

impl BertForMaskedLm {
    pub fn new(root: &nn::Path, cfg: &BertConfig) -> Self {
        let bert = root / "bert";
        let dims = cfg.dims();
        BertForMaskedLm {
            embeddings: BertEmbeddings::new(&bert / "embeddings", cfg),
            encoder: Encoder::new(&bert / "encoder" / "layer", cfg.num_hidden_layers, &dims, &BERT_LAYER),
            head: LmHead::new(root / "cls" / "predictions", &BERT_HEAD, &dims, cfg.vocab_size, &cfg.hidden_act),
        }
    }
}

impl MaskedLm for BertForMaskedLm {
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

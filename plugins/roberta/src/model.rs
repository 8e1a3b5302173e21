//! RoBERTa (and XLM-RoBERTa, the same architecture) for masked LM in tch:
//! RoBERTa's embeddings and names on the shared encoder layers
//! (`runner_encoder::layers`), which hold attention, the feed-forward, keyed
//! dropout and the sparse masked-LM pass.
//!
//! The variables sit under `transformers.RobertaForMaskedLM`'s names
//! (`roberta.encoder.layer.0.attention.self.query.weight`, `lm_head.dense.weight`, ...).
//! The layers are BERT's; what differs is the embeddings (positions count
//! from `padding_idx + 1` over the non-pad tokens, one token type) and the
//! head (`lm_head.{dense, layer_norm, bias}`, always exact GELU).

use tch::nn;
use tch::Tensor;

use runner_encoder::config::BertConfig;
use runner_encoder::layers::{normal, Encoder, HeadNames, LayerNorm, LmHead, MaskedLm, Pass, BERT_LAYER};

// https://github.com/huggingface/transformers/blob/main/src/transformers/models/roberta/modeling_roberta.py (RobertaEmbeddings)
#[derive(Debug)]
struct RobertaEmbeddings {
    word_embeddings: Tensor,       // (V, H)
    position_embeddings: Tensor,   // (P, H)
    token_type_embeddings: Tensor, // (type_vocab_size, H), row 0 used
    layer_norm: LayerNorm,
    dropout: f64,
    padding_idx: i64,
}

impl RobertaEmbeddings {
    fn new(p: nn::Path, cfg: &BertConfig) -> Self {
        let std = cfg.initializer_range;
        let var = |name: &str, rows: i64| (&p / name).var("weight", &[rows, cfg.hidden_size], normal(std));
        let word_embeddings = var("word_embeddings", cfg.vocab_size);
        let position_embeddings = var("position_embeddings", cfg.max_position_embeddings);
        // transformers zeroes the padding row of both embeddings (padding_idx).
        tch::no_grad(|| {
            for (table, rows) in [(&word_embeddings, cfg.vocab_size), (&position_embeddings, cfg.max_position_embeddings)] {
                if (0..rows).contains(&cfg.pad_token_id) {
                    let _ = table.get(cfg.pad_token_id).zero_();
                }
            }
        });
        RobertaEmbeddings {
            word_embeddings,
            position_embeddings,
            token_type_embeddings: var("token_type_embeddings", cfg.type_vocab_size),
            layer_norm: LayerNorm::new(&p / "LayerNorm", cfg.hidden_size, cfg.layer_norm_eps),
            dropout: cfg.hidden_dropout_prob,
            padding_idx: cfg.pad_token_id,
        }
    }

    /// `in_document`: each token's position in its document, when rows hold several.
    fn forward(&self, input_ids: &Tensor, in_document: Option<&Tensor>, pass: Pass) -> Tensor {
        let words = Tensor::embedding(&self.word_embeddings, input_ids, -1, false, false); // (B, T, H)
        let positions = match in_document {
            // As fairseq counts them, from padding_idx + 1 in each document; padding_idx at padding.
            Some(p) => (p + self.padding_idx + 1).where_scalarother(&input_ids.ne(self.padding_idx), self.padding_idx),
            None => position_ids(input_ids, self.padding_idx),
        }; // (B, T)
        let positions = Tensor::embedding(&self.position_embeddings, &positions, -1, false, false); // (B, T, H)
        // token_type_ids are all zero for single-segment MLM.
        let x = words + self.token_type_embeddings.get(0) + positions; // transformers' order of sums
        pass.dropout(&self.layer_norm.forward(&x), self.dropout)
    }
}

/// RoBERTa's position ids: `padding_idx + 1 + ` the number of non-pad tokens
/// before each token; pad tokens get `padding_idx` (fairseq's `make_positions`).
pub fn position_ids(input_ids: &Tensor, padding_idx: i64) -> Tensor {
    let real = input_ids.ne(padding_idx).to_kind(tch::Kind::Int64); // (B, T)
    real.cumsum(1, tch::Kind::Int64) * &real + padding_idx
}

/// RobertaLMHead: `dense`, GELU, `layer_norm`, then the tied decoder + `bias`.
const ROBERTA_HEAD: HeadNames = HeadNames { dense: "dense", norm: "layer_norm", bias: "bias" };

/// `transformers.RobertaForMaskedLM` (and `XLMRobertaForMaskedLM`):
/// `roberta.{embeddings, encoder}` and `lm_head`. The passes are [`MaskedLm`]'s.
#[derive(Debug)]
pub struct RobertaForMaskedLm {
    embeddings: RobertaEmbeddings,
    encoder: Encoder,
    head: LmHead,
}

impl RobertaForMaskedLm {
    pub fn new(root: &nn::Path, cfg: &BertConfig) -> Self {
        let roberta = root / "roberta";
        let dims = cfg.dims();
        RobertaForMaskedLm {
            embeddings: RobertaEmbeddings::new(&roberta / "embeddings", cfg),
            encoder: Encoder::new(&roberta / "encoder" / "layer", cfg.num_hidden_layers, &dims, &BERT_LAYER),
            // The head's activation is GELU whatever hidden_act says, as in transformers.
            head: LmHead::new(root / "lm_head", &ROBERTA_HEAD, &dims, cfg.vocab_size, "gelu"),
        }
    }
}

impl MaskedLm for RobertaForMaskedLm {
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

#[cfg(test)]
mod tests {
    use super::position_ids;
    use tch::Tensor;

    #[test]
    fn positions_count_real_tokens_from_padding_idx_plus_one() {
        let ids = Tensor::from_slice2(&[[0i64, 5, 6, 2, 1, 1], [0, 7, 2, 1, 1, 1]]);
        let got = Vec::<i64>::try_from(&position_ids(&ids, 1).flatten(0, -1)).unwrap();
        assert_eq!(got, [2, 3, 4, 5, 1, 1, 2, 3, 4, 1, 1, 1]);
    }
}

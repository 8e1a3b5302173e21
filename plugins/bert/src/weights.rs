//! BERT's checkpoint names. Reading accepts checkpoints saved from `BertModel`
//! (no `bert.` prefix, no MLM head), `BertForMaskedLM` and
//! `BertForPreTraining`, and old TF-style `LayerNorm.gamma/beta` names; the
//! matching itself is `runner_encoder::weights`.

use runner_encoder::weights::Naming;

pub use runner_encoder::weights::{load_checked, load_into, write, LoadReport};

/// How BERT checkpoints name their tensors.
pub const NAMING: Naming = Naming {
    canonical: canonical_name,
    twins: &["cls.predictions.decoder.bias"],
    base: "bert.",
    head: &["cls."],
};

/// Whether a missing tensor may start fresh: the MLM head (`cls.`), or what
/// `allow` names (with or without the leading `bert.`).
pub fn may_start_fresh(name: &str, allow: &[String]) -> bool {
    runner_encoder::weights::may_start_fresh(name, allow, &NAMING)
}

/// Maps a checkpoint tensor name to this model's name, or `None` when the
/// tensor has no place in `BertForMaskedLM` (tied decoder, pooler, NSP head).
fn canonical_name(name: &str) -> Option<String> {
    let mut name = name.to_string();
    if name.starts_with("embeddings.") || name.starts_with("encoder.") || name.starts_with("pooler.") {
        name = format!("bert.{name}");
    }
    name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias");
    if name == "cls.predictions.decoder.bias" {
        // transformers ties decoder.bias to cls.predictions.bias.
        return Some("cls.predictions.bias".into());
    }
    let ignored = name.starts_with("bert.pooler.")
        || name.starts_with("cls.seq_relationship.")
        || name.ends_with("position_ids")
        || name == "cls.predictions.decoder.weight"; // tied to the word embeddings
    (!ignored).then_some(name)
}


#[cfg(test)]
mod tests {
    use super::{canonical_name, may_start_fresh};

    #[test]
    fn only_the_head_or_allowed_names_may_start_fresh() {
        let allow = vec!["encoder.layer.2.".to_string(), "bert.embeddings.token_type_embeddings.weight".to_string()];
        assert!(may_start_fresh("cls.predictions.transform.dense.weight", &[]));
        assert!(!may_start_fresh("bert.encoder.layer.2.output.dense.weight", &[]));
        assert!(may_start_fresh("bert.encoder.layer.2.output.dense.weight", &allow));
        assert!(!may_start_fresh("bert.encoder.layer.1.output.dense.weight", &allow));
        assert!(may_start_fresh("bert.embeddings.token_type_embeddings.weight", &allow));
        assert!(!may_start_fresh("bert.embeddings.word_embeddings.weight", &[String::new()]));
    }

    #[test]
    fn names_map_to_masked_lm_layout() {
        assert_eq!(canonical_name("embeddings.word_embeddings.weight").unwrap(), "bert.embeddings.word_embeddings.weight");
        assert_eq!(
            canonical_name("bert.encoder.layer.0.output.LayerNorm.gamma").unwrap(),
            "bert.encoder.layer.0.output.LayerNorm.weight"
        );
        assert_eq!(canonical_name("cls.predictions.decoder.bias").unwrap(), "cls.predictions.bias");
        assert!(canonical_name("pooler.dense.weight").is_none());
        assert!(canonical_name("cls.predictions.decoder.weight").is_none());
        assert!(canonical_name("bert.embeddings.position_ids").is_none());
    }
}

//! `runner fill-mask --model DIR TEXT`: top-k predictions for each mask token
//! (the model's own, `[MASK]` or `<mask>`; `[MASK]` is accepted for every family),
//! with the same fields as the transformers fill-mask pipeline
//! (`score`, `token`, `token_str`, `sequence`).

use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use tch::{Kind, Tensor};

use runner_api::{ModelSource, Options};

use crate::components;
use crate::data::tokenizer;
use crate::error::user_msg;
use crate::recipe::check::Problems;
use crate::recipe::files;
use crate::registry::Registry;

/// One candidate for one mask token.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub score: f64,
    pub token: i64,
    pub token_str: String,
    pub sequence: String,
}

/// Predicts every mask token of `text`: for each, the `top_k` candidates, best first.
pub fn predict(registry: &Registry, dir: &Path, text: &str, top_k: usize) -> Result<Vec<Vec<Candidate>>> {
    if top_k == 0 {
        return Err(user_msg("--top-k: must be at least 1, got 0"));
    }
    // The checks `validate` makes of a recipe's model folder: config.json parses,
    // the weights are whole, the tokenizer loads and fits the vocabulary.
    let mut problems = Problems::default();
    let limits = files::model_folder(&mut problems, dir, None);
    let tok_path = dir.join("tokenizer.json");
    if dir.is_dir() {
        if tok_path.is_file() {
            files::tokenizer(&mut problems, "tokenizer", &tok_path, limits, Some(dir.join("config.json")));
        } else {
            problems.push("tokenizer", format!("{} has no tokenizer.json", dir.display()));
        }
    }
    if !problems.0.is_empty() {
        let list: Vec<String> = problems.0.iter().map(|p| p.replacen("model.checkpoint: ", "", 1)).collect();
        return Err(user_msg(format!("--model: {}", list.join("\n  "))));
    }
    let tok = tokenizer::load(&tok_path)?;
    let vocab = tokenizer::vocab_info(&tok, &tok_path)?;
    let options = Options::new();
    let source = ModelSource { checkpoint: Some(dir), options: &options, device: tch::Device::Cpu, compute: tch::Kind::Float };
    let family = files::model_for_checkpoint(&dir.join("config.json"), registry)
        .map_err(|e| user_msg(format!("--model: {e}")))?
        .unwrap_or_else(|| "bert".to_string());
    let model = components::model(registry, &family, &source)?;
    let info = model.info()?;
    let max_positions = info.max_positions;
    if vocab.vocab_size as i64 > info.vocab_size {
        return Err(user_msg(format!(
            "--model: {} has {} tokens but the model's vocabulary has {}",
            tok_path.display(),
            vocab.vocab_size,
            info.vocab_size
        )));
    }

    // The model's own mask token; `[MASK]` is read as it too, whatever the family.
    let mask_token = &vocab.tokens[vocab.mask_id as usize];
    let text = if mask_token != "[MASK]" { text.replace("[MASK]", mask_token) } else { text.to_string() };
    let enc = tok.encode(text.as_str(), true).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
    let ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
    let masks: Vec<usize> = ids.iter().enumerate().filter(|(_, &i)| i == vocab.mask_id).map(|(p, _)| p).collect();
    if masks.is_empty() {
        return Err(user_msg(format!("the text has no mask token ({mask_token}, or [MASK])")));
    }
    if ids.len() as i64 > max_positions {
        return Err(user_msg(format!("the text has {} tokens; the model takes at most {max_positions}", ids.len())));
    }
    let input = Tensor::from_slice(&ids).unsqueeze(0); // (1, T)
    let logits = tch::no_grad(|| model.logits(&input, &input.ones_like()))?; // (1, T, V)
    let logits = logits.to_device(tch::Device::Cpu);
    let k = top_k.min(vocab.vocab_size) as i64;
    masks
        .iter()
        .map(|&pos| {
            let probs = logits.get(0).get(pos as i64).to_kind(Kind::Float).softmax(-1, Kind::Float); // (V,)
            let (values, indices) = probs.topk(k, -1, true, true);
            let values: Vec<f64> = Vec::try_from(values.to_kind(Kind::Double))?;
            let indices: Vec<i64> = Vec::try_from(indices)?;
            values
                .into_iter()
                .zip(indices)
                .map(|(score, id)| {
                    let mut filled: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
                    filled[pos] = id as u32;
                    let decode = |ids: &[u32], skip| tok.decode(ids, skip).map_err(|e| anyhow::anyhow!("decode: {e}"));
                    Ok(Candidate { score, token: id, token_str: decode(&[id as u32], false)?, sequence: decode(&filled, true)? })
                })
                .collect()
        })
        .collect()
}

pub fn fill_mask(dir: &Path, text: &str, top_k: usize, json: bool) -> Result<()> {
    let registry = Registry::discover(&[])?;
    let per_mask = predict(&registry, dir, text, top_k)?;
    if json {
        // One mask: a flat list, as the transformers pipeline returns; several: a list per mask.
        let out = if per_mask.len() == 1 { serde_json::to_string_pretty(&per_mask[0])? } else { serde_json::to_string_pretty(&per_mask)? };
        println!("{out}");
        return Ok(());
    }
    for (i, candidates) in per_mask.iter().enumerate() {
        println!("mask #{}", i + 1);
        for c in candidates {
            println!("  {:.4}  {:<15} {}", c.score, c.token_str, c.sequence);
        }
    }
    Ok(())
}

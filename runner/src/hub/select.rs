//! Which files of a repository a recipe needs: the model files of a checkpoint,
//! or the parquet files a dataset path names. Pure functions over file lists,
//! used on the Hub's listing online and on the cached snapshot offline.

/// Files of a model repository the runner reads, besides the weights.
const MODEL_REQUIRED: &[&str] = &["config.json", "model.safetensors"];
const MODEL_OPTIONAL: &[&str] = &["tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"];

/// The model files to fetch from a repository holding `files`, or why it cannot be used.
pub fn model_files(files: &[String]) -> Result<Vec<&'static str>, String> {
    let has = |f: &str| files.iter().any(|x| x == f);
    if !has("model.safetensors") {
        if has("model.safetensors.index.json") {
            return Err("has sharded safetensors weights (model.safetensors.index.json); only a single model.safetensors is supported".into());
        }
        if has("pytorch_model.bin") {
            return Err("has only pytorch_model.bin weights; only model.safetensors is supported \
                        (convert them, e.g. with transformers' save_pretrained(safe_serialization=True), into a local folder)"
                .into());
        }
        return Err("has no model.safetensors".into());
    }
    if !has("config.json") {
        return Err("has no config.json".into());
    }
    Ok(MODEL_REQUIRED.iter().chain(MODEL_OPTIONAL).copied().filter(|f| has(f)).collect())
}

/// The parquet files that `path` names among `files` (sorted):
/// - `path` is a `.parquet` file: that file;
/// - `path` is a folder: every parquet file under it;
/// - otherwise the last part of `path` is a split: `config/train` is every
///   `config/train-*.parquet` and `config/train.parquet` (the Hub's layout,
///   e.g. `wikitext-2-raw-v1/train-00000-of-00001.parquet`);
/// - an empty path: every parquet file of the repository.
pub fn dataset_files(files: &[String], path: &str) -> Vec<String> {
    let parquet: Vec<&String> = files.iter().filter(|f| f.ends_with(".parquet")).collect();
    let mut out: Vec<String> = if path.is_empty() {
        parquet.iter().map(|f| f.to_string()).collect()
    } else if path.ends_with(".parquet") {
        parquet.iter().filter(|f| f.as_str() == path).map(|f| f.to_string()).collect()
    } else {
        let dir = format!("{path}/");
        let under: Vec<String> = parquet.iter().filter(|f| f.starts_with(&dir)).map(|f| f.to_string()).collect();
        if !under.is_empty() {
            under
        } else {
            let (parent, split) = path.rsplit_once('/').map_or(("", path), |(p, s)| (p, s));
            parquet
                .iter()
                .filter(|f| {
                    let (fparent, name) = f.rsplit_once('/').map_or(("", f.as_str()), |(p, n)| (p, n));
                    fparent == parent && (name.starts_with(&format!("{split}-")) || name == format!("{split}.parquet"))
                })
                .map(|f| f.to_string())
                .collect()
        }
    };
    out.sort();
    out
}

/// A short list of the parquet files there are, for a message when none matched.
pub fn describe_parquet(files: &[String]) -> String {
    let parquet: Vec<&String> = files.iter().filter(|f| f.ends_with(".parquet")).collect();
    if parquet.is_empty() {
        return "it has no parquet files".into();
    }
    let shown: Vec<&str> = parquet.iter().take(8).map(|s| s.as_str()).collect();
    let more = if parquet.len() > 8 { format!(" and {} more", parquet.len() - 8) } else { String::new() };
    format!("its parquet files are {}{more}", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn model_files_need_safetensors_and_config() {
        let all = list(&["config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "README.md", "pytorch_model.bin"]);
        assert_eq!(model_files(&all).unwrap(), vec!["config.json", "model.safetensors", "tokenizer.json", "vocab.txt"]);
        let bin = list(&["config.json", "pytorch_model.bin"]);
        assert!(model_files(&bin).unwrap_err().contains("only model.safetensors is supported"));
        let sharded = list(&["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"]);
        assert!(model_files(&sharded).unwrap_err().contains("sharded"));
        assert!(model_files(&list(&["model.safetensors"])).unwrap_err().contains("config.json"));
    }

    #[test]
    fn dataset_paths_name_splits_folders_or_files() {
        let files = list(&[
            "README.md",
            "wikitext-2-raw-v1/test-00000-of-00001.parquet",
            "wikitext-2-raw-v1/train-00000-of-00001.parquet",
            "wikitext-2-raw-v1/validation-00000-of-00001.parquet",
            "wikitext-103-raw-v1/train-00000-of-00002.parquet",
            "wikitext-103-raw-v1/train-00001-of-00002.parquet",
            "data/train.parquet",
        ]);
        assert_eq!(dataset_files(&files, "wikitext-2-raw-v1/train"), list(&["wikitext-2-raw-v1/train-00000-of-00001.parquet"]));
        assert_eq!(dataset_files(&files, "wikitext-2-raw-v1/validation"), list(&["wikitext-2-raw-v1/validation-00000-of-00001.parquet"]));
        assert_eq!(dataset_files(&files, "wikitext-103-raw-v1/train").len(), 2);
        assert_eq!(dataset_files(&files, "wikitext-2-raw-v1").len(), 3);
        assert_eq!(dataset_files(&files, "data/train"), list(&["data/train.parquet"]));
        assert_eq!(dataset_files(&files, "data/train.parquet"), list(&["data/train.parquet"]));
        assert_eq!(dataset_files(&files, "").len(), 6);
        assert!(dataset_files(&files, "wikitext-2-raw-v1/dev").is_empty());
        assert!(dataset_files(&files, "wikitext-2-raw-v1/tr").is_empty(), "a split is a whole name");
        assert!(describe_parquet(&files).contains("wikitext-2-raw-v1/test-00000-of-00001.parquet"));
    }
}

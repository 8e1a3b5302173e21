//! The `bert` model component: BERT for masked LM, loaded from a Hugging Face
//! directory or initialised from a config, and exported back in that format.

pub mod model;
pub mod weights;

pub use runner_encoder::{config, dropout};

use std::path::Path;

use anyhow::Result;
use tch::nn::VarStore;

use runner_api::{Component, Factory, MlmModel, ModelSource, ParamDoc, Registrar};
pub use runner_encoder::model::Mlm;
use runner_encoder::model::Family;
use runner_encoder::options::{ModelOptions, Start};

pub use config::BertConfig;
pub use model::BertForMaskedLm;

/// A BERT masked LM with its weights.
pub struct Bert {
    pub config: BertConfig,
    /// The source `config.json`, kept so an export preserves its extra keys.
    source_config: Option<serde_json::Value>,
    vs: VarStore,
    model: BertForMaskedLm,
}

impl Bert {
    /// Random initialisation from a config, the way transformers does it.
    pub fn from_config(config: BertConfig, device: tch::Device) -> Self {
        let vs = VarStore::new(device);
        let model = BertForMaskedLm::new(&vs.root(), &config);
        Bert { config, source_config: None, vs, model }
    }

    /// Loads `config.json` + `model.safetensors` from a Hugging Face directory,
    /// with `overrides` applied to the config. Only the MLM head may be missing
    /// from the checkpoint (it starts fresh); see [`Bert::from_pretrained_allowing`].
    pub fn from_pretrained(dir: &Path, overrides: &serde_yaml::Mapping, device: tch::Device) -> Result<Self> {
        Bert::from_pretrained_allowing(dir, overrides, &[], device)
    }

    /// [`Bert::from_pretrained`], where tensors named by `allow_missing` (names or
    /// prefixes) may also be missing. Like transformers, every missing and
    /// unexpected tensor is listed; unlike it, a missing encoder tensor that is
    /// not allowed is an error, since a config that disagrees with its weights
    /// would otherwise train from random layers without a word.
    pub fn from_pretrained_allowing(
        dir: &Path,
        overrides: &serde_yaml::Mapping,
        allow_missing: &[String],
        device: tch::Device,
    ) -> Result<Self> {
        let (config, raw) = BertConfig::from_file(&dir.join("config.json"))?;
        let config = config.with_overrides(overrides)?;
        let mut bert = Bert::from_config(config, device);
        bert.source_config = Some(raw);
        let depth = ("num_hidden_layers", bert.config.num_hidden_layers);
        weights::load_checked(&bert.vs.variables(), dir, &weights::NAMING, allow_missing, depth)?;
        Ok(bert)
    }
}

impl Family for Bert {
    type Net = BertForMaskedLm;
    fn net(&self) -> &BertForMaskedLm {
        &self.model
    }
    fn vars(&self) -> &VarStore {
        &self.vs
    }
    fn export_config(&self) -> serde_json::Value {
        self.config.to_hf_json(self.source_config.as_ref())
    }
    fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }
    fn max_positions(&self) -> i64 {
        self.config.max_position_embeddings
    }
}

fn check_options(options: &runner_api::Options) -> Result<()> {
    let opts = ModelOptions::parse(options)?;
    BertConfig::preset(opts.preset_or("bert-base"))?.with_overrides(&opts.config).map(|_| ())
}

fn build(source: &ModelSource) -> Result<Box<dyn MlmModel>> {
    let opts = ModelOptions::parse(source.options)?;
    let bert = match opts.start(source.checkpoint, "bert-base")? {
        Start::Checkpoint(dir) => Bert::from_pretrained_allowing(dir, &opts.config, &opts.allow_missing, source.device)?,
        Start::Preset(name) => Bert::from_config(BertConfig::preset(name)?.with_overrides(&opts.config)?, source.device),
    };
    Ok(Box::new(Mlm(bert)))
}

runner_api::declare_plugin!("bert", register);

/// Registers this plugin's components.
pub fn register(r: &mut Registrar) {
    r.add(Component {
        name: "bert",
        doc: "BERT for masked LM (Hugging Face layout); from a checkpoint directory or a preset",
        params: vec![
            ParamDoc { name: "preset", default: "bert-base", doc: "architecture for random init: bert-tiny, bert-small, bert-medium, minilm-l6, bert-base, bert-large" },
            ParamDoc { name: "config", default: "{}", doc: "overrides of config.json fields, e.g. {hidden_dropout_prob: 0.0}" },
            ParamDoc {
                name: "allow_missing",
                default: "[]",
                doc: "checkpoint tensors (names or prefixes) that may be missing and start fresh; the MLM head always may",
            },
        ],
        check: check_options,
        factory: Factory::Model(build),
    });
    r.reads_model_types("bert", &["bert"]);
}

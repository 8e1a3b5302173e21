//! A plugin whose masker panics: the runner must turn that into an error naming the plugin.
use runner_api::{no_options, Component, Factory, MaskedSequence, Masker, MaskingRates, Options, Registrar, RngCore, VocabInfo};

runner_api::declare_plugin!("panicky", register);

struct Panicky;

impl Masker for Panicky {
    fn mask(&self, _: &[i64], _: &mut dyn RngCore) -> anyhow::Result<MaskedSequence> {
        panic!("this masker always panics")
    }
}

fn build(_: &Options, _: MaskingRates, _: &VocabInfo) -> anyhow::Result<Box<dyn Masker>> {
    Ok(Box::new(Panicky))
}

pub fn register(r: &mut Registrar) {
    r.add(Component { name: "panicky", doc: "panics on every sequence", params: vec![], check: no_options, factory: Factory::Masker(build) });
}

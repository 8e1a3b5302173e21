//! A plugin that declares another runner-api version: the runner must refuse it.
runner_api::declare_plugin!("bad-api", register, api_version = "0.0.0-other");

pub fn register(_: &mut runner_api::Registrar) {}

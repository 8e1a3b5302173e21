//! A plugin that declares another ABI version: the runner must refuse it.
runner_api::declare_plugin!("bad-abi", register, abi_version = 999);

pub fn register(_: &mut runner_api::Registrar) {}

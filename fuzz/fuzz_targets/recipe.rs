//! libFuzzer entry point: one recipe text plus `--set` arguments per input
//! (see `runner_fuzz::one_input`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| runner_fuzz::one_input(data));

//! The runner's `recipe` module, less `resolve.rs` and `files.rs` (which need
//! libtorch, the registry and the file system).

#[path = "../../runner/src/recipe/check.rs"]
pub mod check;
#[path = "../../runner/src/recipe/overrides.rs"]
pub mod overrides;
#[path = "../../runner/src/recipe/parse.rs"]
pub mod parse;
#[path = "../../runner/src/recipe/raw.rs"]
pub mod raw;

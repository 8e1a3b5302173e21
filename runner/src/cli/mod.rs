//! Command-line types (clap) and dispatch: one file per subcommand.

mod data;
mod device_check;
pub mod fill_mask;
mod launch;
mod new_plugin;
mod plugins;
mod report;
mod run;
mod sweep;
mod validate;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::recipe::Override;
use crate::sweep::grid::GridArg;

#[derive(Debug, Parser)]
#[command(name = "runner", version, about = "Masked-language-model pretraining of BERT from YAML recipes")]
pub struct Cli {
    /// More log output (info is the default; RUST_LOG overrides both).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Recipe arguments shared by `run` and `validate`.
#[derive(Debug, clap::Args)]
pub struct RecipeArgs {
    /// The recipe YAML file.
    pub recipe: PathBuf,
    /// Override a recipe field: --set training.lr=1e-4 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<Override>,
}

/// Arguments of `runner sweep`.
#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    /// The recipe template (minijinja); its `{# grid: ... #}` header gives the grid.
    pub template: PathBuf,
    /// Sweep a recipe key over values: --grid masking.rate=0.15,0.3 (repeatable;
    /// replaces the header's values for that key).
    #[arg(long = "grid", value_name = "KEY=V1,V2,...")]
    pub grid: Vec<GridArg>,
    /// Override a recipe field in every run: --set training.max_steps=50 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<Override>,
    /// Sweep name (results/<name>/); default: the header's name, else the file stem.
    #[arg(long)]
    pub name: Option<String>,
    /// Render and check every run, print the plan, run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Redo finished runs whose recipe has changed since.
    #[arg(long)]
    pub overwrite: bool,
}

/// Arguments of `runner launch`.
#[derive(Debug, clap::Args)]
pub struct LaunchArgs {
    /// Worker processes on this machine (one per GPU on CUDA; the CPU cores
    /// are split between them on the CPU).
    #[arg(long, value_name = "N", alias = "nproc_per_node")]
    pub nproc_per_node: usize,
    /// Machines in the job; run `runner launch` once on each.
    #[arg(long, value_name = "M", default_value_t = 1)]
    pub nnodes: usize,
    /// This machine's place among them, 0 to M-1 (node 0 hosts the rendezvous).
    #[arg(long, value_name = "R", default_value_t = 0, alias = "node_rank")]
    pub node_rank: usize,
    /// Address of node 0 (default: 127.0.0.1; required with --nnodes above 1).
    #[arg(long, value_name = "ADDR", alias = "master_addr")]
    pub master_addr: Option<String>,
    /// Rendezvous port on node 0 (default: a free port on one machine, 29500 on several).
    #[arg(long, value_name = "PORT", alias = "master_port")]
    pub master_port: Option<u16>,
    /// The recipe YAML file every worker runs.
    pub recipe: PathBuf,
    /// Override a recipe field in every worker: --set training.lr=1e-4 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = checked_override)]
    pub overrides: Vec<String>,
    /// Replace the results of an earlier run with the same name.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Continue the run from its newest complete checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Start more workers than this machine has CPU cores (on the CPU) or GPUs
    /// (on CUDA, where they share the GPUs in turn: Gloo only); without it,
    /// such a count is refused.
    #[arg(long)]
    pub oversubscribe: bool,
}

/// An override as given, once it parses (the workers parse it again).
fn checked_override(s: &str) -> Result<String, String> {
    s.parse::<Override>().map(|_| s.to_string()).map_err(|e| format!("{e:#}"))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train (continue pretraining) as a recipe says; results go to results/<run>/.
    Run {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// Replace the results of an earlier run with the same name.
        #[arg(long, conflicts_with = "resume")]
        overwrite: bool,
        /// Continue the run from its newest complete checkpoint (checkpoints/step-N/);
        /// with none yet, start it.
        #[arg(long)]
        resume: bool,
    },
    /// Continue a stopped run from its newest complete checkpoint, with the recipe
    /// it saved (RUN_DIR/recipe.yaml).
    Resume {
        /// The run's folder (results/<run>).
        run_dir: PathBuf,
        /// Override a recipe field: only keys that cannot change the result
        /// (eval.every, training.log_every, training.threads, ...) or training.max_steps upward.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<Override>,
    },
    /// Train with N data-parallel worker processes (`runner run` under torchrun's variables).
    Launch(LaunchArgs),
    /// Check a recipe (keys, types, files, component names) without training.
    Validate {
        #[command(flatten)]
        recipe: RecipeArgs,
    },
    /// The token store: build it ahead of a run, or say what it holds.
    #[command(subcommand)]
    Data(DataCommand),
    /// Run a recipe template over a grid; results go to results/<sweep>/<run>/.
    Sweep(SweepArgs),
    /// Table (and with --plot, curves) of every run under DIR: report.csv/.parquet/.md/.png.
    Report {
        /// A sweep directory (results/<sweep>) or a directory of runs, or one run's directory.
        dir: PathBuf,
        /// Also draw eval loss and perplexity against step into report.png and report.svg.
        #[arg(long)]
        plot: bool,
    },
    /// Predict the mask tokens of a text, like the transformers fill-mask pipeline.
    FillMask {
        /// A Hugging Face model directory (config.json, model.safetensors, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// Text with one or more mask tokens: the model's own (`<mask>` for RoBERTa) or [MASK].
        text: String,
        /// How many candidates per mask.
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List every component the plugins offer: kind, name, parameters, docs.
    Plugins {
        /// Also load these plugin libraries or folders.
        #[arg(long = "plugin", value_name = "PATH")]
        extra: Vec<PathBuf>,
    },
    /// Create a plugin crate (outside this workspace) that builds with `cargo build`.
    NewPlugin {
        /// Plugin name: letters, digits, '-' and '_'.
        name: String,
        /// Folder to create it in (default: the current folder).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// The runner's side of bench/gpu.sh (not for everyday use).
    #[command(hide = true, subcommand)]
    DeviceCheck(device_check::DeviceCheck),
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Tokenize the recipe's corpus into the token cache now, so that runs
    /// (on this machine or one sharing the cache folder) start by mapping it.
    Prepare {
        #[command(flatten)]
        recipe: RecipeArgs,
    },
    /// Documents, tokens, blocks and the length histogram of the recipe's
    /// token store (prepared first if the cache lacks it).
    Stats {
        #[command(flatten)]
        recipe: RecipeArgs,
    },
}

/// Logs go to stderr; `RUST_LOG` decides the level (default: info).
pub fn init_logging(verbose: bool) {
    let default = if verbose { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Launch(args) => launch::launch(&args, cli.verbose),
        Command::Run { recipe, overwrite, resume } => run::run(&recipe, run::start_of(overwrite, resume)),
        Command::Resume { run_dir, overrides } => run::resume(&run_dir, overrides),
        Command::Validate { recipe } => validate::validate(&recipe),
        Command::Data(DataCommand::Prepare { recipe }) => data::prepare(&recipe),
        Command::Data(DataCommand::Stats { recipe }) => data::stats(&recipe),
        Command::Sweep(args) => sweep::sweep(&args),
        Command::Report { dir, plot } => report::report(&dir, plot),
        Command::FillMask { model, text, top_k, json } => fill_mask::fill_mask(&model, &text, top_k, json),
        Command::Plugins { extra } => plugins::list(&extra),
        Command::NewPlugin { name, dir } => new_plugin::create(&name, &dir),
        Command::DeviceCheck(check) => device_check::run(&check),
    }
}

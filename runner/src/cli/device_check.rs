//! `runner device-check`: the runner's side of `bench/gpu.sh`, hidden from
//! `--help`. Each part runs one thing on one device and writes what it
//! computed (safetensors) or measured (JSON on stdout); `bench/gpu_check.py`
//! compares it with transformers on the same device and writes the report.
//!
//! - `info`: whether libtorch sees CUDA once `libtorch_cuda.so` is loaded (the
//!   binary does not link it: see `device.rs`), the GPUs and their capability.
//! - `parity`: a tiny fixture's logits, loss and three AdamW steps
//!   (`tests/fixtures/*/expected.safetensors`, `training.json`), at a precision.
//! - `grad-scaler`: fp16 loss scaling on the GradScaler fixture of tiny-bert.
//! - `dropout`: keyed dropout masks against torch's dropout, and written-out
//!   attention with keyed dropout against torch's fused attention, timed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Subcommand;
use tch::{Device, Kind, Tensor};

use runner_api::{MlmBatch, MlmModel, Mode, ModelSource, Options};

use crate::autocast::Autocast;
use crate::error::user_msg;
use crate::registry::Registry;
use crate::train::optimizer::{AdamW, AdamWConfig};
use crate::train::scaler::{LossScaler, ScalerConfig};

#[derive(Debug, Subcommand)]
pub enum DeviceCheck {
    /// CUDA as libtorch sees it, as JSON.
    Info,
    /// Fixtures' logits, loss and AdamW steps on a device: OUT/<fixture>/<precision>.safetensors each.
    Parity {
        /// A fixture folder: config.json, model.safetensors, expected.safetensors, training.json (repeatable).
        #[arg(long, required = true)]
        fixture: Vec<PathBuf>,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// fp32, bf16 or fp16 (autocast on float32 weights), comma-separated.
        #[arg(long, default_value = "fp32")]
        precision: String,
        /// A folder, made if missing.
        #[arg(long)]
        out: PathBuf,
    },
    /// fp16 loss scaling on the GradScaler fixture (tiny-bert's grad_scaler.json), into a safetensors file.
    GradScaler {
        #[arg(long)]
        fixture: PathBuf,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Keyed dropout and attention against torch's, timed; JSON on stdout.
    Dropout {
        #[arg(long, default_value = "cpu")]
        device: String,
        /// bf16 or fp32.
        #[arg(long, default_value = "bf16")]
        precision: String,
        /// Batch, tokens, hidden size, heads (bert-base: 64,128,768,12).
        #[arg(long, default_value = "64,128,768,12")]
        shape: String,
        #[arg(long, default_value_t = 20)]
        repeats: usize,
    },
}

pub fn run(check: &DeviceCheck) -> Result<()> {
    match check {
        DeviceCheck::Info => info(),
        DeviceCheck::Parity { fixture, device, precision, out } => {
            let device = device_of(device)?;
            for fixture in fixture {
                let name = fixture.file_name().ok_or_else(|| user_msg(format!("--fixture {}: not a folder", fixture.display())))?;
                let dir = out.join(name);
                std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
                for p in precision.split(',') {
                    parity(fixture, device, kind_of(p)?, &dir.join(format!("{p}.safetensors")))?;
                }
            }
            Ok(())
        }
        DeviceCheck::GradScaler { fixture, device, out } => grad_scaler(fixture, device_of(device)?, out),
        DeviceCheck::Dropout { device, precision, shape, repeats } => dropout(device_of(device)?, kind_of(precision)?, shape, *repeats),
    }
}

fn device_of(s: &str) -> Result<Device> {
    crate::recipe::parse_device(s).map_err(|e| user_msg(format!("--device: {e}")))
}

fn kind_of(s: &str) -> Result<Kind> {
    match s {
        "fp32" => Ok(Kind::Float),
        "bf16" => Ok(Kind::BFloat16),
        "fp16" => Ok(Kind::Half),
        other => Err(user_msg(format!("--precision: `{other}` is not fp32, bf16 or fp16"))),
    }
}

fn info() -> Result<()> {
    crate::device::load_cuda();
    let available = tch::Cuda::is_available();
    let count = tch::Cuda::device_count();
    let capability: Vec<_> = (0..count.max(0) as usize).map(crate::device::cuda_capability).collect();
    let nccl = std::env::current_exe()?.with_file_name(crate::distributed::c10d::NCCL_LIBRARY);
    let out = serde_json::json!({
        "cuda_available": available,
        "device_count": count,
        "capability": capability,
        "cudnn_available": tch::Cuda::cudnn_is_available(),
        "nccl_library_beside_binary": nccl.is_file(),
        "libtorch_version": runner_api::plugin::LIBTORCH_VERSION,
    });
    println!("{out}");
    Ok(())
}

/// The model of a fixture folder, through the plugins beside the binary.
fn load_model(fixture: &Path, device: Device, compute: Kind) -> Result<Box<dyn MlmModel>> {
    let registry = Registry::discover(&[])?;
    let family = crate::recipe::files::model_for_checkpoint(&fixture.join("config.json"), &registry)
        .map_err(|e| user_msg(format!("--fixture: {e}")))?
        .unwrap_or_else(|| "bert".to_string());
    let options = Options::new();
    let source = ModelSource { checkpoint: Some(fixture), options: &options, device, compute };
    crate::components::model(&registry, &family, &source)
}

fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let read = Tensor::read_safetensors(path).with_context(|| format!("{}", path.display()))?;
    Ok(read.into_iter().collect())
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}", path.display()))
}

fn batch_of(e: &HashMap<String, Tensor>, device: Device) -> Result<MlmBatch> {
    let get = |k: &str| e.get(k).map(|t| t.to_device(device)).ok_or_else(|| user_msg(format!("the fixture has no `{k}` tensor")));
    Ok(MlmBatch { input_ids: get("input_ids")?, attention_mask: get("attention_mask")?, labels: get("labels")?, documents: None })
}

fn optimizer(model: &dyn MlmModel, cfg: &serde_json::Value) -> Result<AdamW> {
    let f = |k: &str| cfg[k].as_f64().ok_or_else(|| user_msg(format!("training settings: no number `{k}`")));
    let betas = |i: usize| cfg["betas"][i].as_f64().ok_or_else(|| user_msg("training settings: no `betas`"));
    Ok(AdamW::new(model.parameters()?, AdamWConfig { beta1: betas(0)?, beta2: betas(1)?, eps: f("eps")?, weight_decay: f("weight_decay")? }))
}

fn parameters_cpu(model: &dyn MlmModel) -> Result<Vec<(String, Tensor)>> {
    model.parameters()?.into_iter().map(|p| Ok((format!("param.{}", p.name), p.tensor.f_detach()?.f_to_device(Device::Cpu)?))).collect()
}

fn write(out: &Path, tensors: Vec<(String, Tensor)>) -> Result<()> {
    let named: Vec<(&str, Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t.contiguous())).collect();
    Tensor::write_safetensors(&named, out).with_context(|| format!("{}", out.display()))
}

fn parity(fixture: &Path, device: Device, compute: Kind, out: &Path) -> Result<()> {
    let e = read_tensors(&fixture.join("expected.safetensors"))?;
    let cfg = read_json(&fixture.join("training.json"))?;
    let model = load_model(fixture, device, compute)?;
    let b = batch_of(&e, device)?;
    let started = Instant::now();
    let (logits, loss) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
        let _autocast = Autocast::enter(device, compute);
        Ok((model.logits(&b.input_ids, &b.attention_mask)?.f_to_kind(Kind::Float)?, model.forward_mlm(&b, Mode::Eval)?.loss))
    })?;
    let mut opt = optimizer(model.as_ref(), &cfg)?;
    let steps = cfg["steps"].as_u64().unwrap_or(3);
    let (lr, clip) = (cfg["lr"].as_f64().unwrap_or(1e-3), cfg["max_grad_norm"].as_f64());
    let mut losses = Vec::new();
    for _ in 0..steps {
        opt.zero_grad();
        let loss = {
            let _autocast = Autocast::enter(device, compute);
            model.forward_mlm(&b, Mode::Train { dropout_key: 1 })?.loss
        };
        losses.push(loss.f_detach()?);
        loss.f_backward()?;
        let _norm = opt.clip_grad_norm(clip)?;
        opt.step(lr)?;
    }
    losses.push(tch::no_grad(|| -> Result<Tensor> {
        let _autocast = Autocast::enter(device, compute);
        Ok(model.forward_mlm(&b, Mode::Eval)?.loss)
    })?);
    let mut tensors = vec![
        ("logits".to_string(), logits.to_device(Device::Cpu)),
        ("loss".to_string(), loss.to_kind(Kind::Double).to_device(Device::Cpu).reshape([1])),
        ("train_losses".to_string(), Tensor::f_stack(&losses, 0)?.to_kind(Kind::Double).to_device(Device::Cpu)),
    ];
    tensors.extend(parameters_cpu(model.as_ref())?);
    write(out, tensors)?;
    println!("{}", serde_json::json!({ "out": out, "seconds": started.elapsed().as_secs_f64() }));
    Ok(())
}

/// The loop of `tests/it/parity.rs`'s GradScaler test, on `device`.
fn grad_scaler(fixture: &Path, device: Device, out: &Path) -> Result<()> {
    let e = read_tensors(&fixture.join("expected.safetensors"))?;
    let cfg = read_json(&fixture.join("grad_scaler.json"))?;
    let f = |k: &str| cfg[k].as_f64().ok_or_else(|| user_msg(format!("grad_scaler.json: no number `{k}`")));
    let model = load_model(fixture, device, Kind::Half)?;
    let mut opt = optimizer(model.as_ref(), &cfg)?;
    let scaler_cfg = ScalerConfig { init_scale: f("init_scale")?, growth_interval: f("growth_interval")? as i64, ..Default::default() };
    let mut scaler = LossScaler::new(scaler_cfg, device);
    let params: HashMap<String, Tensor> = model.parameters()?.into_iter().map(|p| (p.name, p.tensor)).collect();
    let inf_param = cfg["inf_param"].as_str().and_then(|n| params.get(n)).ok_or_else(|| user_msg("grad_scaler.json: `inf_param` names no parameter"))?;
    let b = batch_of(&e, device)?;
    let (mut scales, mut skipped, mut losses) = (Vec::new(), Vec::new(), Vec::new());
    for step in 0..f("steps")? as u64 {
        opt.zero_grad();
        let loss = {
            let _fp16 = Autocast::enter(device, Kind::Half);
            model.forward_mlm(&b, Mode::Train { dropout_key: 1 })?.loss
        };
        losses.push(loss.f_double_value(&[])?);
        scaler.scale(&loss)?.f_backward()?;
        if step == f("inf_step")? as u64 {
            let _ = inf_param.grad().get(0).get(0).fill_(f64::INFINITY);
        }
        let found_inf = scaler.unscale(&opt.grads())? > 0.0;
        let _norm = opt.clip_grad_norm(f("max_grad_norm").ok())?;
        if !found_inf {
            opt.step(f("lr")?)?;
        }
        scaler.update(found_inf)?;
        scales.push(scaler.value());
        skipped.push(if found_inf { 1.0 } else { 0.0 });
    }
    let mut tensors = vec![
        ("scales".to_string(), Tensor::from_slice(&scales)),
        ("skipped".to_string(), Tensor::from_slice(&skipped)),
        ("losses".to_string(), Tensor::from_slice(&losses)),
    ];
    tensors.extend(parameters_cpu(model.as_ref())?);
    write(out, tensors)
}

/// Waits for the device's queue, so that a timer measures the work.
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Seconds per call of `f` (forward and backward), after two warm-up calls.
fn time(device: Device, repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    f();
    sync(device);
    let t = Instant::now();
    for _ in 0..repeats {
        f();
    }
    sync(device);
    t.elapsed().as_secs_f64() / repeats.max(1) as f64
}

fn dropout(device: Device, compute: Kind, shape: &str, repeats: usize) -> Result<()> {
    use runner_encoder::dropout::MaskRng;
    use runner_encoder::layers::{attention, KeyMask, Pass};
    let dims: Vec<i64> = shape.split(',').map(|d| d.trim().parse::<i64>()).collect::<Result<_, _>>().map_err(|e| user_msg(format!("--shape: {e}")))?;
    let &[b, t, h, nh] = dims.as_slice() else { return Err(user_msg("--shape: batch,tokens,hidden,heads")) };
    if nh <= 0 || h % nh != 0 {
        return Err(user_msg(format!("--shape: hidden {h} is not a multiple of heads {nh}")));
    }
    let p = 0.1;
    let opts = (compute, device);
    let x = Tensor::randn([b, t, h], opts).set_requires_grad(true);
    let qkv: Vec<Tensor> = (0..3).map(|_| Tensor::randn([b, nh, t, h / nh], opts).set_requires_grad(true)).collect();
    let mask = KeyMask::new(&Tensor::ones([b, t], (Kind::Int64, device)), true);
    let rng = MaskRng::new(7);
    let pass = Pass { train: true, rng: &rng };
    let keyed_hidden = time(device, repeats, || rng.dropout(&x, p, true).sum(Kind::Float).backward());
    let torch_hidden = time(device, repeats, || x.dropout(p, true).sum(Kind::Float).backward());
    let keyed_attention = time(device, repeats, || attention(&qkv[0], &qkv[1], &qkv[2], &mask, p, pass).sum(Kind::Float).backward());
    let torch_attention = time(device, repeats, || {
        Tensor::scaled_dot_product_attention(&qkv[0], &qkv[1], &qkv[2], None::<&Tensor>, p, false, None, false).sum(Kind::Float).backward()
    });
    let ms = |s: f64| (s * 1e6).round() / 1e3;
    println!(
        "{}",
        serde_json::json!({
            "shape": {"batch": b, "tokens": t, "hidden": h, "heads": nh}, "p": p, "kind": format!("{compute:?}"),
            "hidden_dropout_ms": {"keyed": ms(keyed_hidden), "torch": ms(torch_hidden)},
            "attention_ms": {"keyed_written_out": ms(keyed_attention), "torch_fused": ms(torch_attention)},
        })
    );
    Ok(())
}

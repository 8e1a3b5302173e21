"""Every GPU check of the runner in one go (bench/gpu.sh runs it; see its header).

Parts, each under its own time budget (a part that runs out is recorded as
`timeout` and the next one starts):

  environment  torch and the runner: is CUDA available to each, which GPU
  parity       tiny fixtures: logits, loss, 3 AdamW steps on the device against the
               runner on the CPU and transformers on the same device (fp32, TF32 off);
               bf16 and fp16 loss within 1% of fp32
  grad_scaler  fp16 loss scaling on the device against torch.amp.GradScaler's fixture
  dropout      keyed dropout and written-out attention against torch's, timed
  speed        bert-base and roberta-base shapes, 128 tokens, bf16: the runner against
               the hf and sparse peers (bench/peers.py): tokens/s, MFU, peak memory
  processes    two Gloo processes on one device against one process with accumulation 2
  nccl         `runner launch` with NCCL and one process (skipped on the CPU)

Results: OUT/gpu.json and OUT/gpu.md, rewritten after every part.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = ["tiny-bert", "tiny-roberta", "tiny-xlm-roberta", "tiny-distilbert", "tiny-modernbert"]
TOL = 1e-4  # the CPU parity tests' bound
# Dense bf16 peak (no sparsity) by GPU name, for MFU.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


class PartTimeout(Exception):
    pass


class Check:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out)
        os.makedirs(self.out, exist_ok=True)
        self.runner = os.path.abspath(args.runner)
        self.results = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "device": args.device, "quick": args.quick,
                        "host": platform.node(), "parts": {}}
        self.deadline = None

    # -- running things -------------------------------------------------------
    def left(self):
        return max(1.0, self.deadline - time.monotonic())

    def run(self, cmd, env=None, cwd=ROOT, sample_memory=False):
        """Runs `cmd` within the part's remaining time; returns (stdout, peak memory MiB or None)."""
        full_env = dict(os.environ, RUST_LOG="warn")
        full_env.update(env or {})
        proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak = [None]
        stop = threading.Event()
        if sample_memory:
            threading.Thread(target=self.sample, args=(proc.pid, peak, stop), daemon=True).start()
        try:
            stdout, stderr = proc.communicate(timeout=self.left())
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise PartTimeout(" ".join(cmd[:3]))
        finally:
            stop.set()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{stderr[-3000:]}")
        return stdout, peak[0]

    def sample(self, pid, peak, stop):
        """Peak memory of `pid` and its children: GPU memory (nvidia-smi) on CUDA, RSS high-water mark on the CPU."""
        while not stop.wait(0.2):
            try:
                if self.args.device == "cpu":
                    with open(f"/proc/{pid}/status") as f:
                        hwm = [int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM")]
                    value = hwm[0] if hwm else None
                else:
                    q = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                       capture_output=True, text=True, timeout=5).stdout
                    pids = {pid} | children(pid)
                    value = sum(float(m) for p, m in (l.split(",") for l in q.strip().splitlines() if l.strip()) if int(p) in pids)
                if value is not None and (peak[0] is None or value > peak[0]):
                    peak[0] = value
            except (OSError, ValueError, subprocess.SubprocessError):
                pass

    def runner_json(self, *args, **kw):
        stdout, _ = self.run([self.runner, *args], **kw)
        return json.loads(stdout.strip().splitlines()[-1])

    # -- parts ------------------------------------------------------------------
    def part(self, name, budget, fn):
        budget = budget * self.args.budget_scale
        self.deadline = time.monotonic() + budget
        t0 = time.monotonic()
        entry = {"budget_s": budget}
        try:
            details = fn()
            entry.update(details)
            entry.setdefault("status", "pass")
        except PartTimeout as e:
            entry.update(status="timeout", note=f"stopped at its {budget:.0f} s budget in {e}")
        except Exception as e:  # a part that fails must not stop the others
            entry.update(status="error", note=f"{type(e).__name__}: {e}"[-4000:])
        entry["seconds"] = round(time.monotonic() - t0, 1)
        self.results["parts"][name] = entry
        self.write()
        print(f"[gpu.sh] {name}: {entry['status']} ({entry['seconds']} s)", file=sys.stderr, flush=True)

    def environment(self):
        import torch
        info = self.runner_json("device-check", "info")
        torch_cuda = torch.cuda.is_available()
        d = {"torch": torch.__version__, "torch_cuda_available": torch_cuda, "runner": info,
             "gpu": torch.cuda.get_device_name(0) if torch_cuda else None,
             "cuda_available": bool(info["cuda_available"])}
        try:
            from importlib.metadata import version
            d["transformers"] = version("transformers")
        except ImportError:
            d["transformers"] = None
        self.gpu = d["gpu"] or platform.processor() or "cpu"
        print(f"[gpu.sh] cuda available: runner {info['cuda_available']}, torch {torch_cuda}; gpu: {d['gpu']}",
              file=sys.stderr, flush=True)
        if self.args.device != "cpu" and not info["cuda_available"]:
            d["status"] = "fail"
            d["note"] = ("the runner does not see CUDA: libtorch_cuda.so did not load. Put the torch wheel's lib/ on "
                         "LD_LIBRARY_PATH (bench/gpu.sh does when it finds torch)")
        return d

    def parity(self):
        import torch
        from safetensors.torch import load_file
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        dev = self.args.device
        rows, ok = [], True
        fixtures = [os.path.join(ROOT, "tests/fixtures", name) for name in FIXTURES]
        plan = [(dev, "fp32,bf16,fp16"), ("cpu", "fp32")] if dev != "cpu" else [(dev, "fp32,bf16,fp16")]
        for device, precisions in plan:  # one runner process per device: it loads the plugins once
            folder = os.path.join(self.out, "parity", device.replace(":", ""))
            args = [a for f in fixtures for a in ("--fixture", f)]
            self.run([self.runner, "device-check", "parity", *args, "--device", device, "--precision", precisions, "--out", folder])
        for name, fixture in zip(FIXTURES, fixtures):
            runs = {}
            for device, precisions in plan:
                for p in precisions.split(","):
                    runs[(device, p)] = load_file(os.path.join(self.out, "parity", device.replace(":", ""), name, f"{p}.safetensors"))
            ours = runs[(dev, "fp32")]
            hf = transformers_reference(fixture, dev)
            row = {"fixture": name}
            row["vs_transformers"] = compare(ours, hf)
            if dev != "cpu":
                row["vs_cpu"] = compare(ours, runs[("cpu", "fp32")])
            loss32 = float(ours["loss"][0])
            for p in ("bf16", "fp16"):
                row[f"{p}_loss_rel"] = abs(float(runs[(dev, p)]["loss"][0]) / loss32 - 1)
            row["pass"] = (all(v <= TOL for v in row["vs_transformers"].values())
                           and all(v <= TOL for v in row.get("vs_cpu", {}).values())
                           and row["bf16_loss_rel"] < 0.01 and row["fp16_loss_rel"] < 0.01)
            ok &= row["pass"]
            rows.append(row)
        return {"status": "pass" if ok else "fail", "tolerance": TOL, "fixtures": rows}

    def grad_scaler(self):
        import torch
        from safetensors.torch import load_file
        fixture = os.path.join(ROOT, "tests/fixtures/tiny-bert")
        path = os.path.join(self.out, "grad_scaler.safetensors")
        self.run([self.runner, "device-check", "grad-scaler", "--fixture", fixture, "--device", self.args.device, "--out", path])
        got, want = load_file(path), load_file(os.path.join(fixture, "grad_scaler.safetensors"))
        same_scales = torch.equal(got["scales"], want["scales"])
        same_skips = torch.equal(got["skipped"], want["skipped"])
        loss_gap = float((got["losses"] - want["losses"]).abs().max())
        worst = max(float((got[k].double() - want[k].double()).abs().max()) for k in got
                    if k.startswith("param.") and k in want and not k.endswith("attention.self.key.bias"))
        ok = same_scales and same_skips and loss_gap < 2e-3 and worst < 2.5e-3
        return {"status": "pass" if ok else "fail", "same_scales": same_scales, "same_skipped_steps": same_skips,
                "loss_max_abs": loss_gap, "param_max_abs": worst, "bounds": "losses 2e-3, parameters 2.5e-3 (tests/it/parity.rs)"}

    def dropout(self):
        shape = "2,32,64,4" if self.args.quick else "64,128,768,12"
        precision = "fp32" if self.args.device == "cpu" else "bf16"
        d = self.runner_json("device-check", "dropout", "--device", self.args.device, "--precision", precision,
                             "--shape", shape, "--repeats", "3" if self.args.quick else "20")
        return {"measured": d}

    def speed(self):
        quick, dev = self.args.quick, self.args.device
        families = ["bert"] if quick else ["bert", "roberta", "modernbert"]
        batch = self.args.batch or (4 if quick else 128)
        steps, warmup = (2, 1) if quick else (20, 5)
        work = tempfile.mkdtemp(dir=self.out, prefix="speed-")
        rows = []
        for family in families:
            config = tiny_config(family) if quick else base_config(family)
            cfg_path = os.path.join(work, f"{family}-config.json")
            with open(cfg_path, "w") as f:
                json.dump(config, f)
            blocks = os.path.join(work, "blocks.npy")
            make_blocks(blocks, vocab=1000, rows=batch * (warmup + steps) + 64)
            peaks = PEAK_BF16.get(next((k for k in PEAK_BF16 if k in (self.gpu or "")), ""), None)
            flops_per_token = 6 * count_params(config) + 12 * config["num_hidden_layers"] * config["hidden_size"] * 128
            # The runner: the same shape, from scratch, bf16, 128-token packed blocks of the toy corpus.
            r = self.runner_speed(family, config, batch, warmup, steps, work)
            rows.append(dict(family=family, trainer="runner", batch=batch, **r))
            for peer in (["sparse"] if quick else ["hf", "sparse"]):
                stdout, peak = self.run([sys.executable, os.path.join(ROOT, "bench/peers.py"), "--peer", peer, "--model", cfg_path,
                                         "--family", family, "--tokenizer", os.path.join(ROOT, "tests/fixtures/tiny-bert"),
                                         "--train", blocks, "--eval", blocks, "--batch", str(batch), "--steps", str(steps),
                                         "--warmup", str(warmup), "--precision", "bf16", "--device", dev, "--no-eval",
                                         "--threads", str(self.args.threads)], sample_memory=True)
                p = json.loads(stdout.strip().splitlines()[-1])
                rows.append(dict(family=family, trainer=peer, batch=batch, tokens_per_s=p["tokens_per_s"],
                                 peak_memory_mib=p["peak_device_mb"] or peak))
            for row in rows:
                if row["family"] == family:
                    row["mfu"] = row["tokens_per_s"] * flops_per_token / peaks if peaks else None
        return {"precision": "bf16", "tokens": 128, "steps": steps, "warmup": warmup, "rows": rows,
                "mfu_note": "6 x parameters + attention flops per token, against the GPU's dense bf16 peak"}

    def runner_speed(self, family, config, batch, warmup, steps, work):
        name = f"speed-{family}"
        tokenizer = "tests/fixtures/tiny-bert" if family == "bert" else "tests/fixtures/tiny-roberta"
        sets = {
            "run.output_dir": work, "run.name": name, "data.max_seq_len": "128", "data.cache": "false", "data.holdout": "0.1",
            "model.checkpoint": "null", "model.name": family, "model.options.preset": f"{family}-base",
            "tokenizer.path": f"{tokenizer}/tokenizer.json",
            "training.device": self.args.device, "training.precision": "bf16", "training.batch_size": str(batch),
            "training.max_steps": str(warmup + steps), "training.log_every": str(warmup), "training.threads": str(self.args.threads),
            "training.checkpoint.every": "0", "eval.every": "0", "eval.at_start": "false", "eval.max_sequences": "8",
        }
        for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
            sets[f"model.options.config.{k}"] = str(config[k])
        if warmup + steps > 2 * warmup:  # rows at warmup, 2 warmup, ..., and the last: take the last one
            sets["training.log_every"] = str(steps)
            sets["training.max_steps"] = str(2 * steps)
        cmd = [self.runner, "run", "tests/recipes/tiny.yaml", "--overwrite"]
        for k, v in sets.items():
            cmd += ["--set", f"{k}={v}"]
        _, peak = self.run(cmd, sample_memory=True)
        import csv
        with open(os.path.join(work, name, "metrics.csv")) as f:
            tps = [float(r["tokens_per_s"]) for r in csv.DictReader(f) if r.get("tokens_per_s")]
        return {"tokens_per_s": tps[-1], "peak_memory_mib": peak}

    def processes(self):
        work = tempfile.mkdtemp(dir=self.out, prefix="processes-")
        dev = self.args.device
        base = ["tests/recipes/tiny.yaml", "--set", f"run.output_dir={work}", "--set", "training.log_every=1",
                "--set", "model.options.config.hidden_dropout_prob=0.1", "--set", "model.options.config.attention_probs_dropout_prob=0.1",
                "--set", "data.cache=false", "--set", f"training.max_steps={3 if self.args.quick else 5}", "--set", f"training.device={dev}",
                "--set", "eval.every=0", "--set", "eval.max_sequences=16"]
        self.run([self.runner, "run", *base, "--set", "run.name=one", "--set", "training.grad_accum_steps=2"])
        self.run([self.runner, "launch", "--nproc-per-node", "2", "--oversubscribe", *base, "--set", "run.name=two",
                  "--set", "training.distributed.backend=gloo"])
        gap = param_gap(os.path.join(work, "one/checkpoint/model.safetensors"), os.path.join(work, "two/checkpoint/model.safetensors"))
        loss_gap = max(abs(a - b) for a, b in zip(train_losses(os.path.join(work, "one")), train_losses(os.path.join(work, "two"))))
        return {"status": "pass" if gap < 1e-5 and loss_gap < 1e-5 else "fail", "param_max_abs": gap, "train_loss_max_abs": loss_gap,
                "bound": "1e-5 (tests/it/distributed.rs)"}

    def nccl(self):
        if self.args.device == "cpu":
            return {"status": "skipped", "note": "NCCL needs a GPU"}
        work = tempfile.mkdtemp(dir=self.out, prefix="nccl-")
        stdout, _ = self.run([self.runner, "launch", "--nproc-per-node", "1", "tests/recipes/tiny.yaml", "--set", f"run.output_dir={work}",
                              "--set", "run.name=nccl", "--set", "training.max_steps=3", "--set", f"training.device={self.args.device}",
                              "--set", "training.distributed.backend=nccl", "--set", "data.cache=false", "--set", "eval.every=0"],
                             env={"RUST_LOG": "info"})
        return {"status": "pass", "losses": train_losses(os.path.join(work, "nccl"))}

    # -- report -----------------------------------------------------------------
    def write(self):
        with open(os.path.join(self.out, "gpu.json"), "w") as f:
            json.dump(self.results, f, indent=2, default=str)
        with open(os.path.join(self.out, "gpu.md"), "w") as f:
            f.write(markdown(self.results))


def children(pid):
    try:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return set()
    kids = {int(p) for p in out.split()}
    return kids.union(*(children(k) for k in kids)) if kids else set()


def transformers_reference(fixture, device):
    """What tests/fixtures/make_family_fixtures.py records, on `device`."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM
    e = load_file(os.path.join(fixture, "expected.safetensors"))
    cfg = json.load(open(os.path.join(fixture, "training.json")))
    model = AutoModelForMaskedLM.from_pretrained(fixture, attn_implementation="eager").to(device)
    ids, mask, labels = (e[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
    logits, loss = out.logits.float().cpu(), out.loss.double().cpu().reshape(1)
    no_decay = set()
    for mname, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            if pname == "bias" or isinstance(module, torch.nn.LayerNorm):
                no_decay.add(f"{mname}.{pname}" if mname else pname)
    named = list(model.named_parameters())
    opt = torch.optim.AdamW([{"params": [p for n, p in named if n not in no_decay], "weight_decay": cfg["weight_decay"]},
                             {"params": [p for n, p in named if n in no_decay], "weight_decay": 0.0}],
                            lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"])
    model.train()
    losses = []
    for _ in range(cfg["steps"]):
        opt.zero_grad()
        loss_t = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        losses.append(loss_t.item())
        loss_t.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["max_grad_norm"])
        opt.step()
    model.eval()
    with torch.no_grad():
        losses.append(model(input_ids=ids, attention_mask=mask, labels=labels).loss.item())
    params = {f"param.{n}": p.detach().cpu() for n, p in model.named_parameters()}
    return {"logits": logits, "loss": loss, "train_losses": torch.tensor(losses, dtype=torch.float64), **params}


def compare(a, b):
    """Largest absolute differences: logits, loss, train losses, parameters after the steps."""
    def gap(k):
        return float((a[k].double() - b[k].double()).abs().max())
    params = [k for k in a if k.startswith("param.") and k in b]
    return {"logits": gap("logits"), "loss": gap("loss"), "train_losses": gap("train_losses"),
            "params": max(gap(k) for k in params) if params else float("nan")}


def base_config(family):
    if family == "modernbert":
        return dict(model_type="modernbert", hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152,
                    vocab_size=50368, max_position_embeddings=8192, local_attention=128, global_attn_every_n_layers=3,
                    pad_token_id=50283)
    if family == "bert":
        return dict(model_type="bert", hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                    vocab_size=30522, max_position_embeddings=512, type_vocab_size=2)
    return dict(model_type="roberta", hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                layer_norm_eps=1e-5)


def tiny_config(family):
    c = base_config(family)
    c.update(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=1024)
    return c


def count_params(c):
    h, l, i, v = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
    if c.get("model_type") == "modernbert":  # rotary positions; GeGLU: Wi is h x 2i
        return v * h + l * (4 * h * h + 3 * h * i)
    return v * h + c["max_position_embeddings"] * h + l * (4 * h * h + 2 * h * i)


def make_blocks(path, vocab, rows):
    import numpy as np
    rng = np.random.default_rng(0)
    np.save(path, rng.integers(5, vocab, size=(rows, 128), dtype=np.int64))


def param_gap(a, b):
    from safetensors.torch import load_file
    x, y = load_file(a), load_file(b)
    return max(float((x[k].double() - y[k].double()).abs().max()) for k in x)


def train_losses(run_dir):
    import csv
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f) if r.get("train_loss")]


def fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}"
    return "" if v is None else str(v)


def markdown(r):
    env = r["parts"].get("environment", {})
    lines = ["# bench/gpu.sh", "",
             f"Started {r['started']} on `{r['host']}`, device `{r['device']}`{' (quick)' if r['quick'] else ''}; "
             f"GPU: {env.get('gpu') or 'none'}; **cuda available: {env.get('cuda_available')}** "
             f"(torch {env.get('torch')}: {env.get('torch_cuda_available')}).", "",
             "| part | status | seconds | note |", "|---|---|---|---|"]
    for name, p in r["parts"].items():
        lines.append(f"| {name} | {p['status']} | {p['seconds']} | {str(p.get('note', '')).splitlines()[0][:200] if p.get('note') else ''} |")
    par = r["parts"].get("parity", {})
    if par.get("fixtures"):
        lines += ["", f"## Parity (max abs difference; bound {TOL})", "",
                  "| fixture | vs transformers: logits / loss / train losses / params | vs CPU: logits / loss / train losses / params | bf16, fp16 loss vs fp32 | pass |",
                  "|---|---|---|---|---|"]
        for f in par["fixtures"]:
            t = " / ".join(fmt(v) for v in f["vs_transformers"].values())
            c = " / ".join(fmt(v) for v in f.get("vs_cpu", {}).values()) or "(the device is the CPU)"
            lines.append(f"| {f['fixture']} | {t} | {c} | {f['bf16_loss_rel']:.2%}, {f['fp16_loss_rel']:.2%} | {f['pass']} |")
    sp = r["parts"].get("speed", {})
    if sp.get("rows"):
        lines += ["", f"## Speed (bf16, 128 tokens, {sp['steps']} measured steps after {sp['warmup']})", "",
                  "| family | trainer | batch | tokens/s | MFU | peak memory (MiB) |", "|---|---|---|---|---|---|"]
        for s in sp["rows"]:
            mfu = "" if s.get("mfu") is None else f"{s['mfu']:.1%}"
            lines.append(f"| {s['family']} | {s['trainer']} | {s['batch']} | {s['tokens_per_s']:.0f} | {mfu} | {fmt(s.get('peak_memory_mib'))} |")
    for name in ("grad_scaler", "dropout", "processes", "nccl"):
        p = r["parts"].get(name)
        if p:
            shown = {k: v for k, v in p.items() if k not in ("status", "seconds", "budget_s", "note")}
            lines += ["", f"## {name}", "", "```", json.dumps(shown, indent=1, default=str), "```"]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder for gpu.json, gpu.md and the parts' files")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny shapes and few steps (the test suite's CPU run)")
    ap.add_argument("--runner", default=os.path.join(ROOT, "target/release/runner"))
    ap.add_argument("--batch", type=int, default=0, help="speed's batch (default: 128 on a GPU, 4 with --quick)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply every part's time budget")
    ap.add_argument("--parts", default="environment,parity,grad_scaler,dropout,speed,processes,nccl")
    args = ap.parse_args()
    c = Check(args)
    c.gpu = None
    # Budgets in seconds: under 10 minutes in all on one GPU.
    budgets = {"environment": 60, "parity": 120, "grad_scaler": 45, "dropout": 45, "speed": 210, "processes": 60, "nccl": 45}
    wanted = args.parts.split(",")
    for name, budget in budgets.items():
        if name in wanted:
            c.part(name, budget, getattr(c, name))
    print(os.path.join(c.out, "gpu.md"))
    failed = [n for n, p in c.results["parts"].items() if p["status"] not in ("pass", "skipped")]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

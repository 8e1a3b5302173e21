"""Benchmark: the runner against its PyTorch peers, same machine, same model, same data.

    bench/run.sh                       # MiniLM-L6 (quickstart checkpoint), fp32 and bf16
    bench/run.sh --bert-base           # also the bert-base shape (random init, batch 16)

Every configuration runs in its own process (so peak RSS is its own), one after the
other, in this one invocation; ratios are against peers measured in the same run.
Prints a table and writes bench/results/latest.{json,md}.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "data/models/all-minilm-l6-v2")
DOCS = os.path.join(ROOT, "data/python-docs")
RUNNER = os.path.join(ROOT, "target/release/runner")


def run_child(cmd):
    """Runs a command; returns (stdout, peak RSS of that process in MB)."""
    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, cwd=ROOT, env={**os.environ, "RUST_LOG": "warn"})
        _, status, usage = os.wait4(p.pid, 0)
        err = p.stderr.read().decode()
        out.seek(0)
        text = out.read().decode()
    if status != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{err}")
    return text, usage.ru_maxrss / 1024


def pack_blocks(tmp, seq=128, eval_docs=25, seed=0):
    """Packs the corpus into [CLS] 126 tokens [SEP] blocks, documents joined by [SEP]."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(DOCS) for f in fs if f.endswith(".txt"))
    rng = np.random.default_rng(seed)
    held = set(rng.choice(len(files), eval_docs, replace=False).tolist())
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    out = {}
    for split, keep in (("train", lambda i: i not in held), ("eval", lambda i: i in held)):
        stream = []
        for i, f in enumerate(files):
            if not keep(i):
                continue
            lines = [l.strip() for l in open(f, encoding="utf-8") if l.strip()]
            if stream:
                stream.append(sep)
            for enc in tok.encode_batch(lines, add_special_tokens=False):
                stream.extend(enc.ids)
        body = seq - 2
        n = len(stream) // body
        blocks = np.array(stream[: n * body], dtype=np.int64).reshape(n, body)
        blocks = np.concatenate([np.full((n, 1), cls), blocks, np.full((n, 1), sep)], axis=1)
        path = os.path.join(tmp, f"{split}.npy")
        np.save(path, blocks[:64] if split == "eval" else blocks)
        out[split] = path
    return out


def matmul_peak(dtype, threads, n=2048, reps=10):
    """Measured dense matmul throughput in GFLOP/s."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def train_flops_per_token(cfg, seq, masked=0.15, sparse=True):
    """FLOPs a training step performs per token (forward + backward = 3x forward)."""
    h, i, layers, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    per_layer = 2 * (4 * h * h + 2 * h * i) + 2 * 2 * seq * h  # projections + QK^T and AV
    head = 2 * (h * h + h * v) * (masked if sparse else 1.0)
    return 3 * (layers * per_layer + head)


def runner_config(args, steps, batch, model_section, precision):
    recipe = f"""
run: {{name: bench, seed: 0, output_dir: {args.tmp}}}
data: {{dataset: text, options: {{documents: file, suffix: .txt}}, train: {DOCS}, holdout: 0.05, max_seq_len: 128}}
model: {model_section}
training: {{device: cpu, precision: {precision}, threads: {args.threads}, batch_size: {batch}, max_steps: {steps}, lr: 1.0e-4, schedule: constant, warmup_steps: 0, log_every: 1}}
eval: {{every: 0, at_start: false, batch_size: 32, max_sequences: 64}}
metrics: [loss]
"""
    path = os.path.join(args.tmp, "bench.yaml")
    with open(path, "w") as f:
        f.write(recipe)
    return path


def run_runner(args, batch, model_section, warmup, steps, precision):
    recipe = runner_config(args, warmup + steps, batch, model_section, precision)
    _, rss = run_child([RUNNER, "run", recipe, "--overwrite"])
    import csv

    rows = list(csv.DictReader(open(os.path.join(args.tmp, "bench/metrics.csv"))))
    train = [r for r in rows if r["train_loss"] and int(r["step"]) > warmup]
    seconds = sum(batch * 128 / float(r["tokens_per_s"]) for r in train)
    evals = [float(r["eval_loss"]) for r in rows if r["eval_loss"]]
    return {"peer": "runner", "precision": precision, "tokens_per_s": len(train) * batch * 128 / seconds, "eval_loss": evals[-1], "peak_rss_mb": rss}


def run_peer(args, peer, precision, model, blocks, batch, warmup, steps):
    cmd = [sys.executable, os.path.join(ROOT, "bench/peers.py"), "--peer", peer, "--model", model, "--tokenizer", MODEL,
           "--train", blocks["train"], "--eval", blocks["eval"], "--batch", str(batch), "--steps", str(steps),
           "--warmup", str(warmup), "--threads", str(args.threads), "--precision", precision]
    text, rss = run_child(cmd)
    result = json.loads(text.strip().splitlines()[-1])
    result["peak_rss_mb"] = rss
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--bert-base", action="store_true")
    args = ap.parse_args()
    results = {"machine": os.uname().nodename, "cpu": next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               "threads": args.threads, "rows": []}
    peak = {"fp32": matmul_peak(torch.float32, args.threads), "bf16": matmul_peak(torch.bfloat16, args.threads)}
    results["matmul_peak_gflops"] = peak
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        blocks = pack_blocks(tmp)
        cfg = json.load(open(os.path.join(MODEL, "config.json")))
        configs = [("minilm-l6", MODEL, cfg, 32, f"{{checkpoint: {MODEL}}}")]
        if args.bert_base:
            base = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                    "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2}
            base_json = os.path.join(tmp, "bert-base.json")
            json.dump(base, open(base_json, "w"))
            configs.append(("bert-base", base_json, base, 16, f"{{options: {{preset: bert-base}}}}\ntokenizer: {{path: {MODEL}/tokenizer.json}}"))
        for name, model, mcfg, batch, section in configs:
            steps = args.steps if name == "minilm-l6" else max(3, args.steps // 4)
            warm = args.warmup if name == "minilm-l6" else 1
            rows = []
            precisions = ["fp32", "bf16"] if name == "minilm-l6" else ["fp32"]
            for precision in precisions:
                rows.append(run_runner(args, batch, section, warm, steps, precision))
                for peer in ("hf", "sparse"):
                    rows.append(run_peer(args, peer, precision, model, blocks, batch, warm, steps))
            for r in rows:
                r["model"], r["batch"] = name, batch
                flops = train_flops_per_token(mcfg, 128, sparse=r["peer"] != "hf")
                r["mfu"] = r["tokens_per_s"] * flops / (peak[r["precision"]] * 1e9)
            results["rows"].extend(rows)
    rows = results["rows"]

    def ratio(r, peer):
        base = [x for x in rows if x["model"] == r["model"] and x["peer"] == peer and x["precision"] == r["precision"]]
        return r["tokens_per_s"] / base[0]["tokens_per_s"] if base else float("nan")

    lines = [f"Machine: {results['cpu']}, {args.threads} threads; matmul peak fp32 {peak['fp32']:.0f}, bf16 {peak['bf16']:.0f} GFLOP/s",
             "", "| model | batch | precision | who | tokens/s | vs hf | vs sparse | eval loss | peak RSS MB | MFU |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['precision']} | {r['peer']} | {r['tokens_per_s']:.0f} | "
                     f"{ratio(r, 'hf'):.2f}x | {ratio(r, 'sparse'):.2f}x | {r['eval_loss']:.3f} | {r['peak_rss_mb']:.0f} | {100 * r['mfu']:.1f}% |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    json.dump(results, open(os.path.join(ROOT, "bench/results/latest.json"), "w"), indent=1)
    open(os.path.join(ROOT, "bench/results/latest.md"), "w").write(table + "\n")


if __name__ == "__main__":
    main()

"""Benchmark: the runner against its PyTorch peers, same machine, same model, same data.

    bench/run.sh                       # MiniLM-L6 (quickstart checkpoint), fp32 and bf16
    bench/run.sh --bert-base           # also the bert-base shape (random init, batch 16)
    bench/run.sh --roberta-base        # also the roberta-base shape (random init, batch 16)
    bench/run.sh --modernbert          # also the modernbert-base shape (random init) at 128
                                       # and 512 tokens, and its local against global
                                       # attention at 1024 and 4096 tokens (runner only)
    bench/run.sh --repeats 1 --steps 5 # a quick look
    bench/run.sh --precisions fp32 --name avx2   # a host without bf16 units: fp32 only,
                                       # into bench/results/avx2.{json,md,png}

Every trainer starts from one checkpoint (the MiniLM encoder with a seeded MLM head),
trains on the same documents with the same batch, learning rate and steps, and is then
scored by one evaluator (bench/peers.py --evaluate) on the same held-out blocks with the
same masks. Every configuration runs in its own process (so peak RSS is its own), the
three trainers interleaved, `--repeats` times; tokens/s is the median. Also measured: the
matmul peak of each precision (for MFU) and how long the runner takes to start training
on a cold and a warm token cache. Prints a table and writes bench/results/NAME.{json,md,png}
(NAME: `--name`, default latest).
"""

import argparse
import json
import os
import re
import statistics
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
PEERS = os.path.join(ROOT, "bench/peers.py")
SEQ = 128
MASKED = 0.15


def run_child(cmd, env=None):
    """Runs a command; returns (stdout, stderr, peak RSS of that process in MB)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT, env={**os.environ, "RUST_LOG": "warn", **(env or {})})
        _, status, usage = os.wait4(p.pid, 0)
        out.seek(0)
        err.seek(0)
        text, errors = out.read().decode(), err.read().decode()
    if status != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{errors}")
    return text, errors, usage.ru_maxrss / 1024


def split_documents(tmp, eval_docs=25, seed=0):
    """Holds out `eval_docs` documents: two folders of links, train/ and eval/."""
    files = sorted(os.path.relpath(os.path.join(d, f), DOCS) for d, _, fs in os.walk(DOCS) for f in fs if f.endswith(".txt"))
    held = set(np.random.default_rng(seed).choice(len(files), eval_docs, replace=False).tolist())
    dirs = {"train": os.path.join(tmp, "docs-train"), "eval": os.path.join(tmp, "docs-eval")}
    for i, f in enumerate(files):
        link = os.path.join(dirs["eval" if i in held else "train"], f)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.join(DOCS, f), link)
    return dirs


def pack_blocks(tmp, docs, seq=SEQ, eval_blocks=64):
    """Packs each split into [CLS] seq-2 tokens [SEP] blocks, documents joined by [SEP]
    (the runner's packed layout), for the peers and the evaluator."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    out = {}
    for split, folder in docs.items():
        stream = []
        for d, _, fs in sorted(os.walk(folder)):
            for f in sorted(fs):
                lines = [l.strip() for l in open(os.path.join(d, f), encoding="utf-8") if l.strip()]
                if stream:
                    stream.append(sep)
                for enc in tok.encode_batch(lines, add_special_tokens=False):
                    stream.extend(enc.ids)
        body = seq - 2
        n = len(stream) // body
        blocks = np.array(stream[: n * body], dtype=np.int64).reshape(n, body)
        blocks = np.concatenate([np.full((n, 1), cls), blocks, np.full((n, 1), sep)], axis=1)
        path = os.path.join(tmp, f"{split}-{seq}.npy")
        np.save(path, blocks[:eval_blocks] if split == "eval" else blocks)
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


def train_flops_per_token(cfg, who, seq=SEQ):
    """Matmul FLOPs a training step performs per token (backward = 2x forward).

    `hf` runs the MLM head at every position; `sparse` only at masked ones; the
    runner also runs its last layer past attention only at masked positions.
    ModernBERT: a GeGLU feed-forward, and local layers score only their window."""
    h, i, layers, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    qkv = 2 * 3 * h * h
    if "local_attention" in cfg:
        every = cfg.get("global_attn_every_n_layers", 3)
        glob = len(range(0, layers, every))
        keys = glob * seq + (layers - glob) * min(seq, cfg["local_attention"] + 1)
        rest = 2 * (h * h + 3 * h * i)
        encoder = layers * (qkv + rest) + 2 * 2 * keys * h
    else:
        rest = 2 * (h * h + 2 * h * i)
        encoder = layers * (qkv + 2 * 2 * seq * h + rest)
    if who == "runner":
        encoder -= (1 - MASKED) * rest
    head = 2 * (h * h + h * v) * (1.0 if who == "hf" else MASKED)
    return 3 * (encoder + head)


def runner_recipe(args, docs, model_section, batch, steps, precision, name="bench", data="", seq=SEQ, eval_sequences=64):
    recipe = f"""
run: {{name: {name}, seed: 0, output_dir: {args.tmp}}}
data: {{dataset: text, options: {{documents: file, suffix: .txt}}, train: {docs['train']}, eval: {docs['eval']}, max_seq_len: {seq}{data}}}
model: {model_section}
training: {{device: cpu, precision: {precision}, threads: {args.threads}, batch_size: {batch}, max_steps: {steps}, lr: 1.0e-4, schedule: constant, warmup_steps: 0, log_every: 1}}
eval: {{every: 0, at_start: false, batch_size: {min(32, eval_sequences)}, max_sequences: {eval_sequences}}}
metrics: [loss]
"""
    path = os.path.join(args.tmp, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(recipe)
    return path


def run_runner(args, docs, blocks, config, precision):
    name, _, _, batch, section, warmup, steps, seq = config
    recipe = runner_recipe(args, docs, section, batch, warmup + steps, precision, seq=seq)
    _, _, rss = run_child([RUNNER, "run", recipe, "--overwrite"])
    import csv

    rows = list(csv.DictReader(open(os.path.join(args.tmp, "bench/metrics.csv"))))
    train = [r for r in rows if r["train_loss"] and int(r["step"]) > warmup]
    seconds = sum(batch * seq / float(r["tokens_per_s"]) for r in train)
    result = {"peer": "runner", "precision": precision, "tokens_per_s": len(train) * batch * seq / seconds, "peak_rss_mb": rss}
    if name == "minilm-l6":
        text, _, _ = run_child([sys.executable, PEERS, "--evaluate", os.path.join(args.tmp, "bench/checkpoint"),
                                "--tokenizer", MODEL, "--eval", blocks[seq]["eval"], "--threads", str(args.threads)])
        result["eval_loss"] = json.loads(text.strip().splitlines()[-1])["eval_loss"]
    return result


def run_peer(args, blocks, config, peer, precision):
    name, model, _, batch, _, warmup, steps, seq = config
    family = next((f for f in ("roberta", "modernbert") if name.startswith(f)), "bert")
    cmd = [sys.executable, PEERS, "--peer", peer, "--model", model, "--family", family, "--tokenizer", MODEL,
           "--train", blocks[seq]["train"], "--eval", blocks[seq]["eval"], "--batch", str(batch), "--steps", str(steps),
           "--warmup", str(warmup), "--threads", str(args.threads), "--precision", precision]
    if name != "minilm-l6":
        cmd.append("--no-eval")  # random init: no eval loss to compare
    text, _, rss = run_child(cmd)
    result = json.loads(text.strip().splitlines()[-1])
    result["peak_rss_mb"] = rss
    if name != "minilm-l6":
        result.pop("eval_loss", None)  # random init: nothing to compare
    return result


def long_context(args, docs, steps=2, warmup=1):
    """ModernBERT-base (random init, fp32, batch 1) at 1024 and 4096 tokens: its own
    layout (two of three layers local, window 128) against every layer global.
    Runner only; seconds per 1000 tokens (median step) and peak RSS."""
    import csv

    out = []
    for seq in (1024, 4096):
        for layout, config in (("local", "{}"), ("global", "{global_attn_every_n_layers: 1}")):
            section = f"{{name: modernbert, options: {{preset: modernbert-base, config: {config}}}}}\ntokenizer: {{path: {MODEL}/tokenizer.json}}"
            print(f"long context: {seq} tokens, {layout}", file=sys.stderr, flush=True)
            # The run's closing eval on one sequence: only the training steps are measured.
            recipe = runner_recipe(args, docs, section, 1, warmup + steps, "fp32", name="long", seq=seq, eval_sequences=1)
            _, _, rss = run_child([RUNNER, "run", recipe, "--overwrite"])
            rows = [r for r in csv.DictReader(open(os.path.join(args.tmp, "long/metrics.csv"))) if r["train_loss"] and int(r["step"]) > warmup]
            tps = statistics.median(float(r["tokens_per_s"]) for r in rows)
            out.append({"seq": seq, "layout": layout, "tokens_per_s": tps, "ms_per_token": 1000 / tps, "peak_rss_mb": rss})
    return out


def startup_seconds(args, docs, start):
    """Seconds from launch to the first training step, with a cold then a warm token cache."""
    cache = os.path.join(args.tmp, "token-cache")
    recipe = runner_recipe(args, docs, f"{{checkpoint: {start}}}", 8, 1, "fp32", name="startup")
    seconds = []
    for _ in ("cold", "warm"):
        _, err, _ = run_child([RUNNER, "run", recipe, "--overwrite"], env={"RUST_LOG": "info", "RUNNER_CACHE_DIR": cache})
        found = re.search(r"ready to train ([0-9.]+)s after start", err)
        if not found:
            sys.exit(f"no 'ready to train' line in the runner's log:\n{err}")
        seconds.append(float(found.group(1)))
    return {"cold_s": seconds[0], "warm_s": seconds[1]}


def line_by_line(args, start, steps=15, warmup=3):
    """Runner tokens/s on WikiText-2 lines (line_by_line examples), in random batches,
    with group_by_length, and packed into rows with document attention; real
    (unpadded) tokens only."""
    wiki = os.path.join(ROOT, "../shared/data/wikitext-2-raw/wiki.test.raw")
    if not os.path.isfile(wiki):
        return None
    import csv

    out = {}
    for kind, data in (("plain", ""), ("grouped", ", group_by_length: true"), ("documents", ", document_attention: true")):
        recipe = runner_recipe(args, {"train": wiki, "eval": wiki}, f"{{checkpoint: {start}}}", 32, warmup + steps, "fp32",
                               name="lines", data=f", examples: line_by_line{data}")
        run_child([RUNNER, "run", recipe, "--overwrite"])
        rows = [r for r in csv.DictReader(open(os.path.join(args.tmp, "lines/metrics.csv"))) if r["train_loss"] and int(r["step"]) > warmup]
        out[kind] = statistics.median(float(r["tokens_per_s"]) for r in rows)
    return out


def data_parallel(args, docs, start, steps=15, warmup=3):
    """MiniLM-L6, fp32, global batch 32: one process with every thread against
    `runner launch` of one process per thread (micro-batch 32 / processes),
    interleaved; tokens/s after warm-up (all processes together) and the share
    of training time spent in all-reduce, medians over the repeats."""
    import csv

    procs = args.threads
    runs = {1: [], procs: []}
    for _ in range(args.repeats):
        for n in runs:
            recipe = runner_recipe(args, docs, f"{{checkpoint: {start}}}", 32 // n, warmup + steps, "fp32", name="dp")
            cmd = [RUNNER, "run", recipe, "--overwrite"] if n == 1 else [RUNNER, "launch", "--nproc-per-node", str(n), recipe, "--overwrite"]
            run_child(cmd)
            rows = [r for r in csv.DictReader(open(os.path.join(args.tmp, "dp/metrics.csv"))) if r["train_loss"] and int(r["step"]) > warmup]
            summary = json.load(open(os.path.join(args.tmp, "dp/summary.json")))
            runs[n].append({"tokens_per_s": statistics.median(float(r["tokens_per_s"]) for r in rows),
                            "allreduce_share": summary.get("allreduce_share", 0.0)})
    return {str(n): {"processes": n, "threads_each": max(1, args.threads // n),
                     "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                     "tokens_per_s_all": [round(r["tokens_per_s"], 1) for r in rs],
                     "allreduce_share": statistics.median(r["allreduce_share"] for r in rs)} for n, rs in runs.items()}


def summarise(runs):
    """Median tokens/s and peak RSS over repeats; eval loss from the first run (deterministic)."""
    row = dict(runs[0])
    row["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in runs)
    row["tokens_per_s_all"] = [round(r["tokens_per_s"], 1) for r in runs]
    row["peak_rss_mb"] = statistics.median(r["peak_rss_mb"] for r in runs)
    return row


def table(results):
    rows, peak = results["rows"], results["matmul_peak_gflops"]

    def find(r, peer, precision=None):
        hits = [x for x in rows if x["model"] == r["model"] and x["peer"] == peer and x["precision"] == (precision or r["precision"])]
        return hits[0] if hits else None

    def ratio(r, peer):
        base = find(r, peer)
        return f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"

    def loss(r):
        if "eval_loss" not in r:
            return "-", "-"
        fp32 = find(r, r["peer"], "fp32")
        vs = f"{100 * (r['eval_loss'] / fp32['eval_loss'] - 1):+.1f}%" if fp32 and r["precision"] != "fp32" else ""
        hf = find(r, "hf")
        vs_hf = f"{100 * (r['eval_loss'] / hf['eval_loss'] - 1):+.1f}%" if hf else "-"
        return f"{r['eval_loss']:.3f}" + (f" ({vs} vs fp32)" if vs else ""), vs_hf

    s = results.get("startup")
    lines = [
        f"Machine: {results['cpu']}, {results['threads']} threads; matmul peak "
        + ", ".join(f"{p} {g:.0f}" for p, g in peak.items()) + " GFLOP/s; "
        f"median of {results['repeats']} runs, {results['steps']} measured steps after {results['warmup']} warm-up"
        + (f" (random-init shapes: {max(3, results['steps'] // 4)} after 1)" if any(r['model'] != 'minilm-l6' for r in rows) else ""),
        "",
        "| model | batch | precision | who | tokens/s | vs hf | vs sparse | eval loss | eval loss vs hf | peak RSS MB | MFU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        l, vs_hf = loss(r)
        lines.append(f"| {r['model']} | {r['batch']} | {r['precision']} | {r['peer']} | {r['tokens_per_s']:.0f} | "
                     f"{ratio(r, 'hf')} | {ratio(r, 'sparse')} | {l} | {vs_hf} | {r['peak_rss_mb']:.0f} | {100 * r['mfu']:.1f}% |")
    if s:
        lines += ["", f"Runner start to first training step ({s['corpus']}): cold token cache {s['cold_s']:.2f} s, warm {s['warm_s']:.2f} s"]
    if results.get("long_context"):
        lc = results["long_context"]
        lines += ["", "Runner, modernbert-base shape at long lengths (fp32, batch 1, one of three layers global, window 128, "
                      "against every layer global):", "", "| tokens | layout | ms per token | tokens/s | peak RSS MB |", "|---|---|---|---|---|"]
        lines += [f"| {r['seq']} | {r['layout']} | {r['ms_per_token']:.2f} | {r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} |" for r in lc]
    if results.get("line_by_line"):
        lbl = results["line_by_line"]
        lines += ["", f"Runner on WikiText-2 test lines (line_by_line, batch 32, fp32, real tokens/s, median step): "
                      f"{lbl['plain']:.0f} in random batches, {lbl['grouped']:.0f} with group_by_length ({lbl['grouped'] / lbl['plain']:.2f}x)"
                      + (f", {lbl['documents']:.0f} packed into rows with document_attention ({lbl['documents'] / lbl['plain']:.2f}x)" if "documents" in lbl else "")]
    if results.get("data_parallel"):
        dp = results["data_parallel"]
        one, many = dp["1"], dp[str(max(int(k) for k in dp))]
        lines += ["", f"Runner data parallel (MiniLM-L6, fp32, global batch 32, Gloo): {one['tokens_per_s']:.0f} tokens/s with 1 process x "
                      f"{one['threads_each']} threads, {many['tokens_per_s']:.0f} with {many['processes']} processes x {many['threads_each']} thread "
                      f"({many['tokens_per_s'] / one['tokens_per_s']:.2f}x), {100 * many['allreduce_share']:.1f}% of its training time in all-reduce"]
    return "\n".join(lines)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    groups = sorted({(r["model"], r["precision"]) for r in rows}, key=lambda g: (g[0] != "minilm-l6", g[1] != "fp32"))
    who = ["hf", "sparse", "runner"]
    colors = {"hf": "#9e9e9e", "sparse": "#5b8fd6", "runner": "#e0703a"}
    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=120)
    width = 0.27
    for j, w in enumerate(who):
        xs, ys = [], []
        for i, g in enumerate(groups):
            hit = [r for r in rows if (r["model"], r["precision"]) == g and r["peer"] == w]
            if hit:
                xs.append(i + (j - 1) * width)
                ys.append(hit[0]["tokens_per_s"])
        bars = ax.bar(xs, ys, width, label={"hf": "transformers (as users run it)", "sparse": "+ sparse prediction", "runner": "runner"}[w], color=colors[w])
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
    ax.set_xticks(range(len(groups)), [f"{m}\n{p}" for m, p in groups])
    ax.set_ylabel("training tokens/s (median)")
    ax.set_title(f"MLM training throughput, {results['cpu']}, {results['threads']} threads", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bert-base", action="store_true")
    ap.add_argument("--roberta-base", action="store_true")
    ap.add_argument("--modernbert", action="store_true")
    ap.add_argument("--skip-extras", action="store_true", help="only the model rows: no start-up, line-by-line or data-parallel figures")
    ap.add_argument("--skip-minilm", action="store_true", help="leave out the MiniLM-L6 rows (with --modernbert and friends)")
    ap.add_argument("--skip-long", action="store_true", help="with --modernbert: leave out the 1024/4096-token local-vs-global runs")
    ap.add_argument("--precisions", default="fp32,bf16",
                    help="MiniLM-L6 precisions to run (bf16 is emulated, and slow, on CPUs without bf16 units)")
    ap.add_argument("--name", default="latest", help="results go to bench/results/NAME.{json,md,png}")
    ap.add_argument("--data-parallel-only", action="store_true",
                    help="only the runner's 1-process vs N-process case; results in bench/results/data-parallel.json")
    args = ap.parse_args()
    if args.data_parallel_only:
        with tempfile.TemporaryDirectory() as tmp:
            args.tmp = tmp
            docs = split_documents(tmp)
            start = os.path.join(tmp, "start")
            run_child([sys.executable, PEERS, "--make-start", start, "--model", MODEL, "--tokenizer", MODEL])
            dp = data_parallel(args, docs, start)
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
        out = os.path.join(ROOT, "bench/results")
        os.makedirs(out, exist_ok=True)
        json.dump({"cpu": cpu, "threads": args.threads, "repeats": args.repeats, "data_parallel": dp},
                  open(os.path.join(out, "data-parallel.json"), "w"), indent=1)
        print(json.dumps(dp, indent=1))
        return
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    results = {"cpu": re.sub(r"\s+\d+-Core Processor$", "", cpu), "threads": args.threads, "repeats": args.repeats,
               "steps": args.steps, "warmup": args.warmup, "rows": []}
    kinds = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peak = {p: matmul_peak(kinds[p], args.threads) for p in sorted({"fp32", *args.precisions.split(",")})}
    results["matmul_peak_gflops"] = peak
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        docs = split_documents(tmp)
        blocks = {SEQ: pack_blocks(tmp, docs)}
        start = os.path.join(tmp, "start")
        run_child([sys.executable, PEERS, "--make-start", start, "--model", MODEL, "--tokenizer", MODEL])
        cfg = json.load(open(os.path.join(MODEL, "config.json")))
        # (name, peer model, config, batch, runner model section, warm-up steps, measured steps)
        configs = [] if args.skip_minilm else [("minilm-l6", start, cfg, 32, f"{{checkpoint: {start}}}", args.warmup, args.steps, SEQ)]
        if args.bert_base:
            base = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                    "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2}
            base_json = os.path.join(tmp, "bert-base.json")
            json.dump(base, open(base_json, "w"))
            configs.append(("bert-base", base_json, base, 16, f"{{options: {{preset: bert-base}}}}\ntokenizer: {{path: {MODEL}/tokenizer.json}}",
                            1, max(3, args.steps // 4), SEQ))
        if args.roberta_base:
            # RoBERTa-base: 50265 tokens, positions after padding_idx 1, one token type. The
            # blocks come from the MiniLM tokenizer (ids < 30522), as for bert-base.
            base = {"vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                    "intermediate_size": 3072, "max_position_embeddings": 514, "type_vocab_size": 1,
                    "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "layer_norm_eps": 1e-5}
            base_json = os.path.join(tmp, "roberta-base.json")
            json.dump(base, open(base_json, "w"))
            configs.append(("roberta-base", base_json, base, 16,
                            f"{{name: roberta, options: {{preset: roberta-base}}}}\ntokenizer: {{path: {MODEL}/tokenizer.json}}",
                            1, max(3, args.steps // 4), SEQ))
        if args.modernbert:
            # ModernBERT-base as released (transformers' defaults): 22 layers, GeGLU 1152,
            # every third layer global, window 128, 50368 tokens. Blocks from the MiniLM tokenizer.
            base = {"vocab_size": 50368, "hidden_size": 768, "intermediate_size": 1152, "num_hidden_layers": 22,
                    "num_attention_heads": 12, "local_attention": 128, "global_attn_every_n_layers": 3,
                    "max_position_embeddings": 8192, "pad_token_id": 50283}
            base_json = os.path.join(tmp, "modernbert-base.json")
            json.dump(base, open(base_json, "w"))
            section = f"{{name: modernbert, options: {{preset: modernbert-base}}}}\ntokenizer: {{path: {MODEL}/tokenizer.json}}"
            for seq, batch in ((128, 16), (512, 4)):
                blocks.setdefault(seq, pack_blocks(tmp, docs, seq))
                configs.append((f"modernbert-base-{seq}", base_json, base, batch, section, 1, max(3, args.steps // 4), seq))
        for config in configs:
            name, mcfg, batch = config[0], config[2], config[3]
            for precision in (args.precisions.split(",") if name == "minilm-l6" else ["fp32"]):
                runs = {"runner": [], "hf": [], "sparse": []}
                for rep in range(args.repeats):
                    print(f"{name} {precision} run {rep + 1}/{args.repeats}", file=sys.stderr, flush=True)
                    runs["runner"].append(run_runner(args, docs, blocks, config, precision))
                    for peer in ("hf", "sparse"):
                        runs[peer].append(run_peer(args, blocks, config, peer, precision))
                for who, rs in runs.items():
                    r = summarise(rs)
                    r["model"], r["batch"] = name, batch
                    r["mfu"] = r["tokens_per_s"] * train_flops_per_token(mcfg, who, config[7]) / (peak[precision] * 1e9)
                    results["rows"].append(r)
        if args.modernbert and not args.skip_long:
            results["long_context"] = long_context(args, docs)
        if not args.skip_extras:
            results["startup"] = {"corpus": "python-docs, 3.2M tokens", **startup_seconds(args, {"train": DOCS, "eval": docs["eval"]}, start)}
            results["line_by_line"] = line_by_line(args, start)
            if args.threads > 1:
                results["data_parallel"] = data_parallel(args, docs, start)
    out = os.path.join(ROOT, "bench/results")
    os.makedirs(out, exist_ok=True)
    text = table(results)
    print(text)
    json.dump(results, open(os.path.join(out, f"{args.name}.json"), "w"), indent=1)
    open(os.path.join(out, f"{args.name}.md"), "w").write(text + "\n")
    try:
        plot(results, os.path.join(out, f"{args.name}.png"))
    except ImportError:
        print("matplotlib is not installed (bench/run.sh installs it): no plot", file=sys.stderr)


if __name__ == "__main__":
    main()

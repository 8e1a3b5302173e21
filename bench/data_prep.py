"""Preparing a corpus: the runner's token store against Hugging Face `datasets`.

Builds a corpus by repeating the Python documentation (data/python-docs) to a size,
then, on the same machine in one invocation:

- runner: `runner data prepare` on a recipe reading it with the `text` dataset
  (paragraphs as documents, 5% held out), into a fresh token cache;
- datasets: what `run_mlm.py` does: `load_dataset("text")`, `.map` with the same
  fast tokenizer (batched, `num_proc` = cores), then grouped into 128-token blocks.

Each runs in its own process; wall time and peak RSS are measured from outside:
the peak of the summed RSS of the process and its children, sampled every 50 ms
(`datasets` works in `num_proc` worker processes), and the largest single
process's peak (getrusage). With `--rss-bound-mb`, only the runner is measured, at
each size of `--sizes-mb`, and the script fails if a peak passes the bound.

    bench/data_prep.sh                                  # ~500 MB, runner vs datasets
    bench/data_prep.sh --rss-bound-mb 1024 --sizes-mb 100,1000
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNNER = Path(os.environ.get("RUNNER_BIN", ROOT / "target/release/runner"))
MODEL = ROOT / "data/models/all-minilm-l6-v2"
DOCS = ROOT / "data/python-docs"


def make_corpus(dst: Path, size_mb: int) -> int:
    """Copies of the Python docs, one file per copy, until `size_mb` is reached."""
    text = "\n\n".join(p.read_text() for p in sorted(DOCS.rglob("*.txt")))
    data = text.encode()
    dst.mkdir(parents=True)
    written, i = 0, 0
    while written < size_mb * 1_000_000:
        (dst / f"part-{i:04d}.txt").write_bytes(data)
        written, i = written + len(data), i + 1
    return written


def cpu_model() -> str:
    """The CPU's name and whether it has AVX-512 (figures from different hosts differ)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    name = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "unknown CPU")
    return f"{name}, {'AVX-512' if ' avx512f' in info else 'AVX2'}"


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        stack.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def measure(cmd, env=None):
    """Runs `cmd`; returns wall seconds, peak tree RSS and the largest process peak (MB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    t.join()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{out}")
    # ru_maxrss: the largest of the waited-for process's own peak (kB on Linux).
    return {"wall_s": wall, "peak_rss_mb": peak[0] / 1e6, "max_process_rss_mb": usage.ru_maxrss * 1024 / 1e6, "log": out[-3000:]}


def run_runner(corpus: Path, tmp: Path, threads: int):
    recipe = tmp / "prepare.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        run: {{name: data-prep}}
        data:
          dataset: text
          options: {{documents: blank_line, suffix: .txt}}
          train: {corpus}
          holdout: 0.05
          examples: packed
          max_seq_len: 128
        model: {{checkpoint: {MODEL}}}
        training: {{threads: {threads}}}
        """))
    cache = tmp / "runner-cache"
    env = dict(os.environ, RUNNER_CACHE_DIR=str(cache), RAYON_NUM_THREADS=str(threads))
    result = measure([str(RUNNER), "data", "prepare", str(recipe)], env)
    result["store_mb"] = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 1e6
    shutil.rmtree(cache)
    return result


DATASETS_SCRIPT = """
import sys
from itertools import chain
from datasets import load_dataset
from transformers import AutoTokenizer
files, model, cache, procs = sys.argv[1].split(","), sys.argv[2], sys.argv[3], int(sys.argv[4])
tok = AutoTokenizer.from_pretrained(model, use_fast=True)
raw = load_dataset("text", data_files={"train": files}, cache_dir=cache)
# run_mlm.py without --line_by_line: tokenize every line, then concatenate and cut into blocks.
tokenized = raw.map(lambda ex: tok(ex["text"], return_special_tokens_mask=True), batched=True,
                    num_proc=procs, remove_columns=["text"])
block = 128
def group_texts(examples):
    concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
    total = (len(concatenated[next(iter(examples.keys()))]) // block) * block
    return {k: [t[i : i + block] for i in range(0, total, block)] for k, t in concatenated.items()}
grouped = tokenized.map(group_texts, batched=True, num_proc=procs)
print("blocks", len(grouped["train"]))
"""


def run_datasets(corpus: Path, tmp: Path, procs: int):
    cache = tmp / "hf-datasets-cache"
    files = ",".join(str(p) for p in sorted(corpus.glob("*.txt")))
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    python = ROOT / "bench/.venv-data/bin/python"
    result = measure([str(python), "-c", DATASETS_SCRIPT, files, str(MODEL), str(cache), str(procs)], env)
    result["store_mb"] = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 1e6
    shutil.rmtree(cache)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--tmp", default=tempfile.gettempdir())
    ap.add_argument("--rss-bound-mb", type=float, help="check the runner's peak RSS at each of --sizes-mb")
    ap.add_argument("--sizes-mb", default="100,1000")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="runner-data-bench-", dir=args.tmp))
    results = {"machine": f"{os.cpu_count()} cores, {cpu_model()}", "threads": args.threads, "runs": []}
    try:
        if args.rss_bound_mb:
            failed = False
            for size in map(int, args.sizes_mb.split(",")):
                corpus = tmp / f"corpus-{size}"
                written = make_corpus(corpus, size)
                r = run_runner(corpus, tmp, args.threads)
                shutil.rmtree(corpus)
                ok = r["peak_rss_mb"] <= args.rss_bound_mb
                failed |= not ok
                print(f"runner data prepare, {written / 1e6:.0f} MB corpus: {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
                      f"(bound {args.rss_bound_mb:.0f} MB: {'ok' if ok else 'EXCEEDED'}), store {r['store_mb']:.0f} MB")
                results["runs"].append({"who": "runner", "corpus_mb": written / 1e6, **{k: v for k, v in r.items() if k != "log"}})
            out = ROOT / "bench/results/data_prep_rss.json"
        else:
            corpus = tmp / "corpus"
            written = make_corpus(corpus, args.size_mb)
            out = ROOT / "bench/results/data_prep.json"
            for who, fn in [("runner", run_runner), ("datasets", run_datasets)]:
                r = fn(corpus, tmp, args.threads)
                results["runs"].append({"who": who, "corpus_mb": written / 1e6, **{k: v for k, v in r.items() if k != "log"}})
                print(f"{who}: {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB (largest process {r['max_process_rss_mb']:.0f} MB), "
                      f"on disk {r['store_mb']:.0f} MB", flush=True)
                # Each figure is kept as soon as it exists: the peer can take an hour or more.
                out.write_text(json.dumps(results, indent=2))
            runner, hf = results["runs"]
            print(f"\n| who | corpus MB | wall s | peak RSS MB | on disk MB |\n|---|---|---|---|---|")
            for r in results["runs"]:
                print(f"| {r['who']} | {r['corpus_mb']:.0f} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['store_mb']:.0f} |")
            print(f"\nrunner vs datasets: {hf['wall_s'] / runner['wall_s']:.2f}x faster, "
                  f"{hf['peak_rss_mb'] / runner['peak_rss_mb']:.2f}x less peak RSS")
            failed = False
        out.write_text(json.dumps(results, indent=2))
        print(f"results: {out.relative_to(ROOT)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

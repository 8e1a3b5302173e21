"""Builds the probe task shipped with the quickstart: paragraphs of the Python
documentation labelled by the part of the docs their file comes from.

    python scripts/make_probe_set.py data/python-docs data/probe-python-docs

Each prose paragraph (a blank-line separated block that is not a heading,
directive, code sample, table or list) of a file under one of the PARTS folders
is labelled with that folder. Files, not paragraphs, are split: within each part
files are ordered by the SHA-256 of their path and the first ones go to eval
until it holds EVAL_SHARE of the part's paragraphs, so no document is on both
sides. Both sides are then balanced (the same number of paragraphs per part,
chosen by the SHA-256 of their text) and written interleaved part by part, so
that any prefix of a file (the probe's `max_examples`) stays balanced.
Deterministic: the same sources give the same files, byte for byte.
"""

import hashlib
import json
import re
import sys
from pathlib import Path

PARTS = ["c-api", "faq", "howto", "library", "reference", "tutorial"]
EVAL_SHARE = 0.3
MIN_WORDS = 12
MAX_TRAIN, MAX_EVAL = 300, 150  # per part

ROLE = re.compile(r":[\w:.+-]+:`([^`<]*?)\s*(?:<[^>]*>)?`")
LITERAL = re.compile(r"``([^`]*)``")
EMPHASIS = re.compile(r"\*{1,2}([^*]+)\*{1,2}")
LINK = re.compile(r"`([^`<]*?)\s*(?:<[^>]*>)?`_{1,2}")
UNDERLINE = re.compile(r"^([=\-~^*#+\"'`.:_])\1{2,}\s*$")


def sha(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def clean(text):
    for pattern in (ROLE, LITERAL, LINK, EMPHASIS):
        text = pattern.sub(r"\1", text)
    text = " ".join(text.split())
    return text[:-1] if text.endswith("::") else text  # "as follows::" introduces a code sample


def paragraphs(path):
    """Prose paragraphs of one reStructuredText file, markup simplified."""
    text = path.read_text(encoding="utf-8", errors="replace")
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if not lines or not lines[0].strip():
            continue
        first = lines[0]
        if first[0].isspace() or first.startswith(("..", ">>>", "|", "+", "* ", "- ", "#. ")) or re.match(r"^\d+\. ", first):
            continue  # indented (code, directive body), directive, table or list
        if any(UNDERLINE.match(l) for l in lines) or first.rstrip().endswith("::"):
            continue  # a heading, or the lead-in of a code sample
        para = clean(block)
        if len(para.split()) >= MIN_WORDS and sum(c.isalpha() for c in para) > 0.6 * len(para):
            out.append(para)
    return out


def main(docs, out_dir):
    docs, out_dir = Path(docs), Path(out_dir)
    train, evals, counts = {}, {}, {}
    for part in PARTS:
        files = sorted((docs / part).rglob("*.txt"), key=lambda p: sha(p.relative_to(docs).as_posix()))
        per_file = [(f, paragraphs(f)) for f in files]
        total = sum(len(p) for _, p in per_file)
        held, tr, ev = 0, [], []
        for i, (f, paras) in enumerate(per_file):
            # At least one file on each side.
            if i == 0 or (held < EVAL_SHARE * total and i < len(per_file) - 1):
                held += len(paras)
                ev += [(p, f) for p in paras]
            else:
                tr += [(p, f) for p in paras]
        train[part], evals[part] = tr, ev
        counts[part] = {"files": len(files), "paragraphs": total}
    n_train = min(MAX_TRAIN, *(len(v) for v in train.values()))
    n_eval = min(MAX_EVAL, *(len(v) for v in evals.values()))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, side, n in (("train", train, n_train), ("eval", evals, n_eval)):
        chosen = {part: sorted(side[part], key=lambda pf: sha(pf[0]))[:n] for part in PARTS}
        with open(out_dir / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for i in range(n):
                for part in PARTS:
                    para, src = chosen[part][i]
                    row = {"text": para, "label": part, "file": src.relative_to(docs).as_posix()}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    train_files = {pf[1] for part in PARTS for pf in train[part]}
    eval_files = {pf[1] for part in PARTS for pf in evals[part]}
    assert not train_files & eval_files, "a file is on both sides"
    summary = {"parts": PARTS, "train_per_class": n_train, "eval_per_class": n_eval, "sources": counts}
    (out_dir / "counts.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{out_dir}: {n_train} train and {n_eval} eval paragraphs per part, parts: {', '.join(PARTS)}")


if __name__ == "__main__":
    main(*sys.argv[1:3])

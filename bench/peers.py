"""PyTorch peers for the runner's benchmark: one process runs one configuration.

Also the benchmark's two helpers that need transformers: `--make-start` writes the
common starting checkpoint (the pretrained encoder plus a seeded MLM head), and
`--evaluate` scores any checkpoint (the runner's export included) with the same
evaluation the peers use, so eval losses compare like for like.

peer `hf`:     transformers BertForMaskedLM (SDPA attention) as users run it: the MLM
               head over every position, torch.optim.AdamW, DataCollatorForLanguageModeling.
peer `sparse`: the same model with the MLM head and loss computed only at masked
               positions ("sparse prediction", as NVIDIA's and MosaicBERT's BERT do);
               for ModernBERT, transformers' own `sparse_prediction` option.

Both read the same packed 128-token blocks the runner trains on (written by bench/run.py),
train `--warmup + --steps` steps at a constant learning rate, and print one JSON line:
tokens/s over the measured steps, eval loss on fixed held-out blocks, peak RSS, and on a
GPU (`--device cuda`, as bench/gpu.sh runs them) peak GPU memory.
"""

import argparse
import json
import resource
import time

import numpy as np
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DataCollatorForLanguageModeling,
    ModernBertConfig,
    ModernBertForMaskedLM,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
)

# --family: the config and masked-LM classes of each model family.
FAMILIES = {
    "bert": (BertConfig, BertForMaskedLM),
    "roberta": (RobertaConfig, RobertaForMaskedLM),
    "modernbert": (ModernBertConfig, ModernBertForMaskedLM),
}


def load_blocks(path):
    return torch.from_numpy(np.load(path)).long()


def sparse_loss(model, input_ids, attention_mask, labels):
    encoder = getattr(model, model.base_model_prefix)  # model.bert, model.roberta
    head = model.cls if hasattr(model, "cls") else model.lm_head
    hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
    picked = labels.view(-1) != -100
    h = hidden.reshape(-1, hidden.size(-1))[picked]  # (N, H)
    logits = head(h)  # (N, V)
    return torch.nn.functional.cross_entropy(logits.float(), labels.view(-1)[picked])


def tokenizer_for(folder):
    return PreTrainedTokenizerFast(
        tokenizer_file=f"{folder}/tokenizer.json",
        unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
    )


def evaluate(model, blocks, tokenizer, batch=32, device="cpu"):
    """Mean cross-entropy over masked tokens of `blocks`, in float32, with masks
    drawn from a fixed seed: every model scored here sees the same masks."""
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    model.eval()
    rng_state = torch.get_rng_state()
    torch.manual_seed(1234)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(blocks), batch):
            b = collator([{"input_ids": r} for r in blocks[i : i + batch]])
            ids, labels = b["input_ids"], b["labels"]
            ids, labels = ids.to(device), labels.to(device)
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            total += float(torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)).float(), labels.view(-1), reduction="sum"))
            count += int((labels != -100).sum())
    torch.set_rng_state(rng_state)
    return total / count


def make_start(model_dir, out, seed):
    """The pretrained encoder with its MLM head initialised from `seed`, saved with
    the tokenizer files: the one starting point of every trainer in the benchmark."""
    import shutil

    torch.manual_seed(seed)
    model = BertForMaskedLM.from_pretrained(model_dir)
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        src = f"{model_dir}/{name}"
        try:
            shutil.copy(src, f"{out}/{name}")
        except FileNotFoundError:
            pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--make-start", metavar="OUT", help="write the common starting checkpoint of --model to OUT")
    ap.add_argument("--evaluate", metavar="DIR", help="score the checkpoint in DIR on --eval and print it")
    ap.add_argument("--peer", choices=["hf", "sparse"])
    ap.add_argument("--model", help="HF model dir, or a config.json for random init")
    ap.add_argument("--family", choices=sorted(FAMILIES), default="bert", help="the model class for a config.json")
    ap.add_argument("--tokenizer", required=True, help="folder with tokenizer.json")
    ap.add_argument("--train")
    ap.add_argument("--eval")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bench/gpu.sh)")
    ap.add_argument("--no-eval", action="store_true", help="measure speed only (no eval loss)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    if args.make_start:
        return make_start(args.model, args.make_start, args.seed)
    tokenizer = tokenizer_for(args.tokenizer)
    if args.evaluate:
        model = BertForMaskedLM.from_pretrained(args.evaluate, attn_implementation="sdpa")
        return print(json.dumps({"eval_loss": evaluate(model, load_blocks(args.eval), tokenizer)}))
    if not (args.peer and args.model and args.train and args.eval):
        ap.error("--peer, --model, --train and --eval are required to train")
    torch.manual_seed(args.seed)
    if args.model.endswith(".json"):
        config_class, model_class = FAMILIES[args.family]
        config = config_class.from_json_file(args.model)
        config._attn_implementation = "sdpa"
        # ModernBERT has its own sparse prediction: the head only where labels are set.
        config.sparse_prediction = args.family == "modernbert" and args.peer == "sparse"
        model = model_class(config)
    else:
        model = BertForMaskedLM.from_pretrained(args.model, attn_implementation="sdpa")
    device = torch.device(args.device)
    model.to(device)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    no_decay = ("bias", "LayerNorm.weight")
    named = list(model.named_parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": 0.01},
            {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0},
        ],
        lr=args.lr,
    )
    train = load_blocks(args.train)
    evalb = load_blocks(args.eval)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step_loss(batch):
        ids, mask, labels = (batch[k].to(device, non_blocking=True) for k in ("input_ids", "attention_mask", "labels"))
        with autocast:
            if args.peer == "hf" or args.family == "modernbert":
                return model(input_ids=ids, attention_mask=mask, labels=labels).loss
            return sparse_loss(model, ids, mask, labels)

    model.train()
    # Shuffled blocks, as the Trainer's sampler draws them (and as the runner does).
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed)).repeat(1 + (args.warmup + args.steps) * args.batch // len(train))
    tokens, t0 = 0, None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            synchronize()
            t0 = time.perf_counter()
        rows = train[order[step * args.batch : (step + 1) * args.batch]]
        batch = collator([{"input_ids": r} for r in rows])
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        loss = step_loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= args.warmup:
            tokens += batch["input_ids"].numel()
    synchronize()
    seconds = time.perf_counter() - t0

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # training's peak, before eval
    print(json.dumps({
        "peer": args.peer,
        "precision": args.precision,
        "tokens_per_s": tokens / seconds,
        "eval_loss": None if args.no_eval else evaluate(model.float(), evalb, tokenizer, device=device),
        "peak_rss_mb": peak_rss_mb,
        "peak_device_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }))


if __name__ == "__main__":
    main()

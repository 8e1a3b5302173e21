"""PyTorch peers for the runner's benchmark: one process runs one configuration.

peer `hf`:     transformers BertForMaskedLM (SDPA attention) as users run it: the MLM
               head over every position, torch.optim.AdamW, DataCollatorForLanguageModeling.
peer `sparse`: the same model with the MLM head and loss computed only at masked
               positions ("sparse prediction", as NVIDIA's and MosaicBERT's BERT do).

Both read the same packed 128-token blocks the runner trains on (written by bench/run.py),
train `--warmup + --steps` steps at a constant learning rate, and print one JSON line:
tokens/s over the measured steps, eval loss on fixed held-out blocks, peak RSS.
"""

import argparse
import json
import resource
import time

import numpy as np
import torch
from transformers import BertForMaskedLM, DataCollatorForLanguageModeling, PreTrainedTokenizerFast


def load_blocks(path):
    return torch.from_numpy(np.load(path)).long()


def sparse_loss(model, input_ids, attention_mask, labels):
    hidden = model.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
    picked = labels.view(-1) != -100
    h = hidden.reshape(-1, hidden.size(-1))[picked]  # (N, H)
    logits = model.cls(h)  # (N, V)
    return torch.nn.functional.cross_entropy(logits.float(), labels.view(-1)[picked])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", choices=["hf", "sparse"], required=True)
    ap.add_argument("--model", required=True, help="HF model dir, or a config.json for random init")
    ap.add_argument("--tokenizer", required=True, help="folder with tokenizer.json")
    ap.add_argument("--train", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.model.endswith(".json"):
        from transformers import BertConfig

        config = BertConfig.from_json_file(args.model)
        config._attn_implementation = "sdpa"
        model = BertForMaskedLM(config)
    else:
        model = BertForMaskedLM.from_pretrained(args.model, attn_implementation="sdpa")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=f"{args.tokenizer}/tokenizer.json",
        unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
    )
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
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step_loss(batch):
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        with autocast:
            if args.peer == "hf":
                return model(input_ids=ids, attention_mask=mask, labels=labels).loss
            return sparse_loss(model, ids, mask, labels)

    model.train()
    tokens, t0 = 0, None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            t0 = time.perf_counter()
        rows = train[(step * args.batch) % len(train):][: args.batch]
        batch = collator([{"input_ids": r} for r in rows])
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        loss = step_loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= args.warmup:
            tokens += batch["input_ids"].numel()
    seconds = time.perf_counter() - t0

    # Eval: fixed masks (seeded), mean cross-entropy over masked tokens.
    model.eval()
    torch.manual_seed(1234)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(evalb), 32):
            batch = collator([{"input_ids": r} for r in evalb[i : i + 32]])
            ids, labels = batch["input_ids"], batch["labels"]
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            n = int((labels != -100).sum())
            total += float(torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)).float(), labels.view(-1), reduction="sum"))
            count += n
    print(json.dumps({
        "peer": args.peer,
        "precision": args.precision,
        "tokens_per_s": tokens / seconds,
        "eval_loss": total / count,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()

"""Does the sentence vector the classifier reads limit the bundled MiniLM on SST-2? [CLS] vs mean pooling.

The bundled checkpoint is all-MiniLM-L6-v2, a sentence-embedding fine-tune trained on the *mean* of its
token vectors. A standard classification head (what `lmtune train` saves, loadable by plain
`AutoModelForSequenceClassification`) reads the [CLS] vector through the pooler instead. This trains both
heads with one plain PyTorch loop, identical otherwise: all 67,349 training sentences, 2 epochs, batch 32 in
length-grouped windows, AdamW lr 1e-4 with layer-wise decay 0.9 (lmtune's llrd defaults), warmup 6% then
linear decay, weight decay 0.01, clipping 1.0, bf16 autocast; dev accuracy (872 sentences) every 500 steps.

    python benchmarks/sst2_pooling.py --pooling mean
    python benchmarks/sst2_pooling.py --pooling cls
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def read(path: Path) -> tuple[list[str], list[int]]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


class Classifier(torch.nn.Module):
    """The encoder, a sentence vector ([CLS] through the checkpoint's pooler, or the masked mean), dropout, linear."""

    def __init__(self, encoder: torch.nn.Module, pooling: str):
        super().__init__()
        self.encoder, self.pooling = encoder, pooling
        self.dropout = torch.nn.Dropout(0.1)
        self.out = torch.nn.Linear(encoder.config.hidden_size, 2)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        output = self.encoder(input_ids=ids, attention_mask=mask)
        if self.pooling == "mean":
            weights = mask.unsqueeze(-1).to(output.last_hidden_state.dtype)
            vector = (output.last_hidden_state * weights).sum(1) / weights.sum(1)
        else:
            vector = output.pooler_output  # tanh(dense([CLS])), as BertForSequenceClassification
        return self.out(self.dropout(vector))


def pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
    return ids, mask


def batches(lengths: list[int], epoch: int, size: int) -> list[list[int]]:
    """Shuffled, then sorted by length within windows of 50 batches, then the batches shuffled."""
    rng = random.Random(epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    out = []
    for start in range(0, len(order), size * 50):
        window = sorted(order[start:start + size * 50], key=lengths.__getitem__)
        out += [window[j:j + size] for j in range(0, len(window), size)]
    rng.shuffle(out)
    return out


def param_groups(model: Classifier, lr: float, decay: float) -> list[dict]:
    layers = model.encoder.config.num_hidden_layers
    groups = []
    for name, param in model.named_parameters():
        if name.startswith("encoder.embeddings"):
            scale = decay ** (layers + 1)
        elif name.startswith("encoder.encoder.layer."):
            scale = decay ** (layers - int(name.split(".")[3]))
        else:  # pooler and output layer
            scale = 1.0
        weight_decay = 0.0 if param.ndim < 2 or "LayerNorm" in name else 0.01
        groups.append({"params": [param], "lr": lr * scale, "base_lr": lr * scale, "weight_decay": weight_decay})
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pooling", choices=["cls", "mean"], required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--decay", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    from transformers import AutoModel, AutoTokenizer

    from lmtune.models import resolve_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    path = resolve_model("bundled:minilm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    train_text, train_labels = read(SST2 / "train.tsv")
    dev_text, dev_labels = read(SST2 / "dev.tsv")
    train_ids = tokenizer(train_text, truncation=True, max_length=66)["input_ids"]
    dev_ids = tokenizer(dev_text, truncation=True, max_length=66)["input_ids"]
    model = Classifier(AutoModel.from_pretrained(path), args.pooling)
    if args.pooling == "mean":
        model.encoder.pooler.requires_grad_(False)  # unused
    groups = [g for g in param_groups(model, args.lr, args.decay) if g["params"][0].requires_grad]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, fused=True)
    lengths = [len(ids) for ids in train_ids]
    total = args.epochs * math.ceil(len(train_ids) / 32)
    warmup = int(0.06 * total)

    def dev_accuracy() -> float:
        model.eval()
        right = 0
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            for start in range(0, len(dev_ids), 128):
                logits = model(*pad(dev_ids[start:start + 128]))
                right += (logits.argmax(-1) == torch.tensor(dev_labels[start:start + 128])).sum().item()
        model.train()
        return right / len(dev_ids)

    print(f"SST-2, {args.pooling} pooling, lr {args.lr}, layer decay {args.decay}, seed {args.seed}, {total} steps")
    step, best, best_step, began = 0, 0.0, 0, time.time()
    model.train()
    for epoch in range(args.epochs):
        for batch in batches(lengths, epoch, 32):
            factor = (step + 1) / (warmup + 1) if step < warmup else max(0.0, (total - step) / (total - warmup))
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            labels = torch.tensor([train_labels[i] for i in batch])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(*pad([train_ids[i] for i in batch]))
            F.cross_entropy(logits.float(), labels).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step % args.eval_every == 0 or step == total:
                accuracy = dev_accuracy()
                if accuracy > best:
                    best, best_step = accuracy, step
                print(f"step {step:>5}/{total}  dev accuracy {100 * accuracy:.2f}%  {time.time() - began:.0f} s",
                      flush=True)
    print(f"{args.pooling} pooling: best dev accuracy {100 * best:.2f}% at step {best_step}; "
          f"at the end {100 * accuracy:.2f}%")


if __name__ == "__main__":
    main()

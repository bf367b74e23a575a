"""On-the-fly text augmentation of training examples: seeded, so a resumed run sees the same edits.

Each (seed, epoch, example) gets its own random stream, so the edits do not depend on batch
order, process count or where a run was resumed. Validation and test data never pass here.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lmtune.config import AugmentationConfig, DataConfig
from lmtune.data.sources import Table
from lmtune.errors import LmtuneError

MLM_TOP_K = 10
"""Replacements are drawn from the masked LM's 10 likeliest whole-word tokens."""


class Augmenter:
    """Word-level edits (delete, swap, insert, masked-LM replacement) of training texts."""

    def __init__(self, cfg: AugmentationConfig, seed: int, corpus: Sequence[str], filler: MaskedFiller | None = None):
        if "mlm" in cfg.methods and filler is None:
            raise ValueError("the mlm augmentation needs a masked-LM filler")
        self.cfg = cfg
        self.seed = seed
        self.filler = filler
        counts = Counter(word for text in corpus for word in text.split())
        self._vocabulary = sorted(counts)  # sorted: the same list (and draws) in every process
        self._weights = [counts[w] for w in self._vocabulary]

    def augment(self, texts: Sequence[str], epoch: int, indices: Sequence[int]) -> list[str]:
        """The texts of examples ``indices`` as seen in ``epoch`` (about ``probability`` of them edited)."""
        out: list[str] = []
        masked: list[tuple[int, list[str], list[int], random.Random]] = []
        for text, index in zip(texts, indices, strict=True):
            rng = random.Random(f"{self.seed}/{epoch}/{index}")  # str seeds are stable across processes
            words = text.split()
            if not words or rng.random() >= self.cfg.probability:
                out.append(text)
                continue
            method = rng.choice(self.cfg.methods)
            n = max(1, round(self.cfg.rate * len(words)))
            if method == "mlm":
                positions = sorted(rng.sample(range(len(words)), min(n, len(words))))
                masked.append((len(out), words, positions, rng))
                out.append(text)
            else:
                out.append(" ".join(getattr(self, f"_{method}")(words, n, rng)))
        if masked:
            for (slot, _, _, _), words in zip(masked, self.filler.fill(masked), strict=True):
                out[slot] = " ".join(words)
        return out

    @staticmethod
    def _delete(words: list[str], n: int, rng: random.Random) -> list[str]:
        if len(words) <= 1:
            return words
        drop = set(rng.sample(range(len(words)), min(n, len(words) - 1)))
        return [w for i, w in enumerate(words) if i not in drop]

    @staticmethod
    def _swap(words: list[str], n: int, rng: random.Random) -> list[str]:
        words = list(words)
        if len(words) > 1:
            for _ in range(n):
                i, j = rng.sample(range(len(words)), 2)
                words[i], words[j] = words[j], words[i]
        return words

    def _insert(self, words: list[str], n: int, rng: random.Random) -> list[str]:
        """Insert words drawn from the training texts' own vocabulary, by frequency."""
        words = list(words)
        for word in rng.choices(self._vocabulary, self._weights, k=n):
            words.insert(rng.randrange(len(words) + 1), word)
        return words


def augmented_batches(augmenter: Augmenter, table: Table, examples: list[dict], tokenizer: Any, data: DataConfig,
                      max_length: int) -> Callable[[int, list[int]], list[dict]]:
    """(epoch, indices) → those training examples with freshly augmented, re-tokenized text.

    Only the first text of a pair is edited; labels and other fields are the encoded example's.
    """
    texts = table.texts(data.text)
    pairs = table.texts(data.text_pair) if data.text_pair else None

    def batch(epoch: int, indices: list[int]) -> list[dict]:
        edited = augmenter.augment([texts[i] for i in indices], epoch, indices)
        encoded = tokenizer(edited, [pairs[i] for i in indices] if pairs else None, truncation=True,
                            max_length=max_length)
        out = []
        for row, i in enumerate(indices):
            example = {**examples[i], "input_ids": encoded["input_ids"][row]}
            if "token_type_ids" in encoded:
                example["token_type_ids"] = encoded["token_type_ids"][row]
            out.append(example)
        return out

    return batch


class MaskedFiller:
    """Proposes in-context replacement words with a masked language model (one forward per batch)."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model = model.eval()
        self.tokenizer = tokenizer
        vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        special = set(tokenizer.all_special_ids)
        # only whole words (no "##" continuation pieces, no punctuation or specials) may be proposed
        allowed = [i not in special and tok.isalpha() for i, tok in enumerate(vocab)]
        self._banned = torch.tensor([not a for a in allowed])
        self._vocab = vocab

    @torch.inference_mode()
    def fill(self, items: list[tuple[int, list[str], list[int], random.Random]]) -> list[list[str]]:
        """For each (slot, words, positions to replace, rng): the words with those positions replaced."""
        mask = self.tokenizer.mask_token
        sentences = [[mask if i in set(pos) else w for i, w in enumerate(words)] for _, words, pos, _ in items]
        batch = self.tokenizer(sentences, is_split_into_words=True, padding=True, truncation=True,
                               return_tensors="pt")
        logits = self.model(**batch).logits.float()
        logits[..., self._banned[: logits.shape[-1]]] = float("-inf")
        results = []
        for row, (_, words, positions, rng) in enumerate(items):
            words = list(words)
            where = (batch["input_ids"][row] == self.tokenizer.mask_token_id).nonzero().flatten().tolist()
            for position, token_index in zip(positions, where, strict=False):  # truncation may drop masks
                top = logits[row, token_index].topk(MLM_TOP_K).indices.tolist()
                choices = [self._vocab[t] for t in top if self._vocab[t] != words[position].lower()]
                if choices:
                    words[position] = rng.choice(choices)
            results.append(words)
        return results


def load_filler(source: str | Path) -> MaskedFiller:
    """A MaskedFiller from a model with a trained masked-LM head; a clear error when it has none."""
    from transformers import AutoModelForMaskedLM

    from lmtune.models import from_hub_or_local, load_tokenizer, resolve_model

    path = resolve_model(str(source))
    tokenizer = load_tokenizer(path)
    if tokenizer.mask_token is None:
        raise LmtuneError(f"augmentation.mlm_model: {source} has no mask token; expected a masked LM (BERT-like)")
    model, info = from_hub_or_local(AutoModelForMaskedLM.from_pretrained, path, output_loading_info=True)
    untrained = [k for k in info.get("missing_keys", []) if "embeddings" not in k]
    if untrained:
        raise LmtuneError(
            f"augmentation.mlm_model: {source} has no trained masked-LM head (missing {untrained[0]}); "
            "expected a masked LM such as a Hub id like bert-base-uncased or a masked_lm run directory"
        )
    return MaskedFiller(model, tokenizer)

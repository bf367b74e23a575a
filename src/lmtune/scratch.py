"""Models from scratch: ``model: scratch:<size>`` is a new Llama-architecture decoder and a byte-level BPE
tokenizer that lmtune trains on the run's training text.

The tokenizer and the model config are written to ``RUN/base`` before training starts (no weights:
the task initialises them from the config, seeded), so a resumed run reuses exactly the same vocabulary.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lmtune.errors import LmtuneError
from lmtune.integrity import check_model_dir

PREFIX = "scratch:"
BASE = "base"
"""Folder of the run directory holding a scratch model's config and trained tokenizer."""
SPECIAL = "<|endoftext|>"
"""lmtune's BPE has one special token: it starts every document and pads batches."""
SCRATCH_LR = 1e-3
"""Default peak learning rate from scratch (fine-tuning defaults are 10-100x smaller)."""


@dataclass(frozen=True)
class Size:
    layers: int
    width: int
    heads: int
    context: int

    @property
    def ffn(self) -> int:
        return int(8 * self.width / 3 / 32 + 0.999) * 32  # SwiGLU's usual 8/3 × width, a multiple of 32


SIZES = {
    "tiny": Size(layers=4, width=128, heads=4, context=512),
    "mini": Size(layers=6, width=256, heads=8, context=1024),
    "small": Size(layers=8, width=512, heads=8, context=2048),
}
"""Named decoder sizes: about 1.6M / 6.9M / 29M parameters with an 8K vocabulary (embeddings tied)."""


def is_scratch(spec: str) -> bool:
    return spec.startswith(PREFIX)


def size_of(spec: str) -> Size:
    name = spec.removeprefix(PREFIX)
    if name not in SIZES:
        raise LmtuneError(f"model: unknown scratch size {name!r}; available: {', '.join(SIZES)}")
    return SIZES[name]


def prepare_base(spec: str, texts: Iterable[str], vocab_size: int, block_size: int, out: Path) -> Path:
    """``out`` holding the tokenizer (trained on ``texts``) and the model config; reused when it exists.

    Written atomically: a run killed here trains the tokenizer again, never from a half-written one.
    """
    size = size_of(spec)
    if block_size > size.context:
        raise LmtuneError(f"train.max_length: {block_size} is longer than the context of {spec} ({size.context})")
    if out.exists():  # a resumed run keeps the tokenizer its checkpoints were trained with
        check_model_dir(out, "scratch model's base (config and tokenizer)", needs_weights=False)
        return out
    tokenizer = train_tokenizer(texts, vocab_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".base-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        tokenizer.save_pretrained(tmp)
        model_config(size, tokenizer).save_pretrained(tmp)
        if out.exists():  # a torchrun sibling published the same files first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LmtuneError(f"output: cannot write {out} ({err.strerror or err})") from None
    return out


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2's scheme: any text encodes, nothing is unknown) learned from ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer=trainer)
    # like Llama's, the tokenizer puts BOS in front of a text by default (lmtune's own encoding adds it itself)
    core.post_processor = processors.TemplateProcessing(single=f"{SPECIAL} $A", special_tokens=[
        (SPECIAL, core.token_to_id(SPECIAL))])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=SPECIAL, eos_token=SPECIAL,
                                   pad_token=SPECIAL, unk_token=SPECIAL, model_max_length=10**6)


def model_config(size: Size, tokenizer):
    from transformers import LlamaConfig

    special = tokenizer.convert_tokens_to_ids(SPECIAL)
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=size.width, intermediate_size=size.ffn,
        num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.heads,
        max_position_embeddings=size.context, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=special, eos_token_id=special, pad_token_id=special, architectures=["LlamaForCausalLM"],
    )


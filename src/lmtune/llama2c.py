"""Import a llama2.c checkpoint (Karpathy's legacy ``.bin`` format) and its ``tokenizer.bin`` as a run
directory holding a transformers Llama model and tokenizer (``lmtune import llama2c PATH OUT``).

The checkpoint is 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
seq_len; a positive vocab_size means the classifier is the token embedding) and then float32 tensors,
row-major ``[out, in]``. llama2.c rotates adjacent pairs (2i, 2i+1) of each head; transformers' Llama
rotates the two halves of a head, so the rows of wq and wk are permuted to match.

The tokenizer file is an int32 max piece length, then per piece a float32 score, an int32 length and
the UTF-8 bytes. llama2.c encodes by prepending a space and merging adjacent pieces greedily by the
score of the merged piece, with byte fallback; that is BPE with merges ranked by score, which the
`tokenizers` library runs natively.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmtune.errors import LmtuneError
from lmtune.integrity import staged_folder

HEADER = struct.Struct("<7i")
BOS, EOS, UNK = "<s>", "</s>", "<unk>"
SPACE = "\u2581"  # sentencepiece's visible space, as transformers' Llama tokenizers write it


@dataclass(frozen=True)
class Shape:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool

    @property
    def kv_dim(self) -> int:
        return self.dim * self.n_kv_heads // self.n_heads


def find_files(path: Path) -> tuple[Path, Path]:
    """(checkpoint .bin, tokenizer .bin) from a folder or the checkpoint itself."""
    if not path.exists():
        raise LmtuneError(f"{path}: not found; expected a llama2.c checkpoint (.bin) or the folder holding it")
    folder = path if path.is_dir() else path.parent
    tokenizers = sorted(p for p in folder.glob("tok*.bin"))
    if path.is_dir():
        checkpoints = sorted(p for p in folder.glob("*.bin") if p not in tokenizers)
        if len(checkpoints) != 1:
            raise LmtuneError(f"{path}: expected one llama2.c checkpoint .bin besides the tokenizer, "
                              f"found {[p.name for p in checkpoints] or 'none'}")
        path = checkpoints[0]
    if len(tokenizers) != 1:
        raise LmtuneError(f"{folder}: expected one llama2.c tokenizer file (tok*.bin) next to the checkpoint, "
                          f"found {[p.name for p in tokenizers] or 'none'}")
    return path, tokenizers[0]


def read_checkpoint(path: Path) -> tuple[Shape, dict[str, torch.Tensor]]:
    """The shape and the tensors of a llama2.c checkpoint, named as transformers' LlamaForCausalLM names them."""
    data = path.read_bytes()
    if len(data) < HEADER.size:
        raise LmtuneError(f"{path}: {len(data)} bytes is too short for a llama2.c checkpoint header")
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = HEADER.unpack_from(data)
    shape = Shape(dim, hidden, layers, heads, kv_heads, abs(vocab), seq_len, vocab > 0)
    if min(dim, hidden, layers, heads, kv_heads, shape.vocab_size, seq_len) <= 0 or dim % heads or heads % kv_heads:
        raise LmtuneError(f"{path}: header {HEADER.unpack_from(data)} is not a llama2.c checkpoint's")
    floats = np.frombuffer(data, dtype="<f4", offset=HEADER.size)
    head = dim // heads
    sizes = [("embed", (shape.vocab_size, dim)), ("attention_norm", (layers, dim)), ("wq", (layers, dim, dim)),
             ("wk", (layers, shape.kv_dim, dim)), ("wv", (layers, shape.kv_dim, dim)), ("wo", (layers, dim, dim)),
             ("ffn_norm", (layers, dim)), ("w1", (layers, hidden, dim)), ("w2", (layers, dim, hidden)),
             ("w3", (layers, hidden, dim)), ("norm", (dim,)), ("freqs", (2, seq_len, head // 2))]
    if not shape.shared_classifier:
        sizes.append(("classifier", (shape.vocab_size, dim)))
    needed = sum(int(np.prod(s)) for _, s in sizes)
    if floats.size != needed:
        raise LmtuneError(f"{path}: holds {floats.size} floats after the header; this shape needs {needed}")
    raw, offset = {}, 0
    for name, size in sizes:
        n = int(np.prod(size))
        raw[name] = torch.from_numpy(floats[offset:offset + n].copy()).reshape(size)
        offset += n
    return shape, _hf_names(shape, raw)


def _rotate_halves(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a q/k projection reordered from adjacent-pair rotation to half rotation, per head."""
    out_dim, in_dim = w.shape
    return w.view(heads, out_dim // heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def _hf_names(shape: Shape, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {"model.embed_tokens.weight": raw["embed"], "model.norm.weight": raw["norm"],
             "lm_head.weight": raw["embed"] if shape.shared_classifier else raw["classifier"]}
    for i in range(shape.n_layers):
        p = f"model.layers.{i}."
        state[p + "input_layernorm.weight"] = raw["attention_norm"][i]
        state[p + "self_attn.q_proj.weight"] = _rotate_halves(raw["wq"][i], shape.n_heads)
        state[p + "self_attn.k_proj.weight"] = _rotate_halves(raw["wk"][i], shape.n_kv_heads)
        state[p + "self_attn.v_proj.weight"] = raw["wv"][i]
        state[p + "self_attn.o_proj.weight"] = raw["wo"][i]
        state[p + "post_attention_layernorm.weight"] = raw["ffn_norm"][i]
        state[p + "mlp.gate_proj.weight"] = raw["w1"][i]
        state[p + "mlp.down_proj.weight"] = raw["w2"][i]
        state[p + "mlp.up_proj.weight"] = raw["w3"][i]
    return state


def build_model(shape: Shape, state: dict[str, torch.Tensor]):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.dim, intermediate_size=shape.hidden_dim,
        num_hidden_layers=shape.n_layers, num_attention_heads=shape.n_heads, num_key_value_heads=shape.n_kv_heads,
        max_position_embeddings=shape.seq_len, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=shape.shared_classifier, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        architectures=["LlamaForCausalLM"],
    )
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise LmtuneError(f"llama2c: the weights do not fit a Llama model (missing {missing}, unexpected {unexpected})")
    if shape.shared_classifier:
        model.tie_weights()
    return model.eval()


def read_pieces(path: Path, vocab_size: int) -> list[tuple[str, float]]:
    """(piece, score) of each token of a llama2.c tokenizer file."""
    data = path.read_bytes()
    offset, pieces = 4, []
    try:
        for _ in range(vocab_size):
            score, length = struct.unpack_from("<fi", data, offset)
            offset += 8
            pieces.append((data[offset:offset + length].decode("utf-8"), score))
            offset += length
    except (struct.error, UnicodeDecodeError) as err:
        raise LmtuneError(f"{path}: not a llama2.c tokenizer for {vocab_size} tokens ({err})") from None
    return pieces


def build_tokenizer(pieces: list[tuple[str, float]]):
    """A fast tokenizer that encodes and decodes as llama2.c does (ids 0, 1, 2: unk, BOS, EOS)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    names = [UNK, BOS, EOS] + [piece.replace(" ", SPACE) for piece, _ in pieces[3:]]
    vocab = {name: i for i, name in enumerate(names)}
    scores = {name: pieces[i][1] for i, name in enumerate(names)}
    merges = []
    for name in names[3:]:
        if name.startswith("<0x") and len(name) == 6:
            continue  # byte-fallback pieces are not merged
        for cut in range(1, len(name)):
            left, right = name[:cut], name[cut:]
            if left in vocab and right in vocab:
                merges.append((scores[name], vocab[name], left, right))
    merges.sort(key=lambda m: (-m[0], m[1]))  # the highest-scoring merged piece first, as llama2.c picks
    core = Tokenizer(models.BPE(vocab=vocab, merges=[(m[2], m[3]) for m in merges], unk_token=UNK,
                                byte_fallback=True, fuse_unk=True))
    core.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    # words for explanations: split before each SPACE. No piece holds a SPACE past its first character, so
    # no merge crosses these splits and the encoding is llama2.c's
    if not any(SPACE in name[1:] for name in names):
        core.pre_tokenizer = pre_tokenizers.Split(Regex(SPACE), behavior="merged_with_next")
    core.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                      decoders.Strip(" ", 1, 0)])
    core.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                        special_tokens=[(BOS, 1)])
    core.add_special_tokens([UNK, BOS, EOS])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, unk_token=UNK,
                                   pad_token=EOS, model_max_length=10**6)


def import_llama2c(path: str | Path, out: str | Path) -> Path:
    """Convert a llama2.c checkpoint (a folder or its .bin) into the run directory ``out``.

    The run directory is a finished ``causal_lm`` run: ``eval``, ``generate`` and a config's ``model:``
    accept it. It is written to a temporary folder and renamed, so a failed import leaves nothing.
    """
    from lmtune import rundir
    from lmtune.config import RunConfig
    from lmtune.config.schema import DataConfig, TrainConfig

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LmtuneError(f"OUT: {out} exists and is not an empty directory")
    checkpoint, tokenizer_file = find_files(Path(path))
    shape, state = read_checkpoint(checkpoint)
    model = build_model(shape, state)
    tokenizer = build_tokenizer(read_pieces(tokenizer_file, shape.vocab_size))
    cfg = RunConfig(task="causal_lm", model=str(checkpoint.resolve()), output=str(out.resolve()),
                    data=DataConfig(train=str(checkpoint.resolve())),
                    train=TrainConfig(max_length=shape.seq_len, lr=5e-4))
    with staged_folder(out) as tmp:  # a failed import leaves nothing; a published one is readable like any run
        rundir.write_header(tmp, cfg, {"imported_from": str(checkpoint.resolve()), "format": "llama2c"})
        model.save_pretrained(tmp / rundir.MODEL)
        tokenizer.save_pretrained(tmp / rundir.MODEL)
    return out

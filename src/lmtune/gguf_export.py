"""`lmtune export RUN --format gguf`: a Llama-family decoder as one GGUF file (weights and tokenizer), read back
and checked before it is kept.

GGUF is llama.cpp's format: one file holding the model's shape as metadata under llama.cpp's key names, the
tokenizer (vocabulary, merges, special ids) and the tensors under llama.cpp's names. Two things differ from a
transformers checkpoint besides names: llama.cpp rotates adjacent pairs of each attention head where
transformers rotates its two halves, so the rows of the query and key projections are permuted on the way out
(readers permute them back); and the tokenizer is described, not serialized, so a tokenizer the format cannot
describe (anything but byte-level BPE, "gpt2", and sentencepiece-style BPE with byte fallback, "llama") is refused.

The check reads the file back with transformers (its GGUF loader, independent of this writer): the rebuilt
tokenizer must give the same ids as the run's on validation texts, and the rebuilt model the same logits within
``TOLERANCE`` (f32) or within what the stated weight type costs (f16, q8_0: the difference is measured and
written down, not bounded). Nothing is kept when a check fails. ``RUN/gguf/gguf.json`` records the checks.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmtune.errors import LmtuneError
from lmtune.inference import LoadedRun, load, plain_model
from lmtune.integrity import staged_folder

GGUF_DIR, GGUF_FILE, GGUF_CHECKS = "gguf", "model.gguf", "gguf.json"
TOLERANCE = 1e-4
"""Largest absolute logit difference an f32 GGUF may have against the run's model in fp32."""
TYPES = ("f32", "f16", "q8_0")
"""Weight types of the 2-D matrices (norms stay f32, as llama.cpp keeps them)."""
_LAYER = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
# llama.cpp's token types
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6


def export_gguf(run_dir: str | Path, out_dir: str | Path | None = None, weights: str = "f32",
                rows: int = 16) -> dict[str, Any]:
    """Write ``RUN/gguf/model.gguf`` (or ``out_dir``), read it back, check it; returns the checks.

    Raises:
        LmtuneError: not a Llama-architecture causal LM, a tokenizer GGUF cannot describe, or a file whose
            tokenizer or logits differ from the run's (nothing is written then).
    """
    try:
        import gguf  # noqa: F401 - the writer; transformers reads the file back with it too
    except ImportError:
        raise LmtuneError("--format gguf needs the gguf package: pip install gguf") from None
    if weights not in TYPES:
        raise LmtuneError(f"--quantize: {weights!r} is not one of {', '.join(TYPES)}")
    run = load(run_dir)
    model = _fp32_llama(run)
    vocabulary = _tokenizer_description(run)
    texts, source = _validation_texts(run, rows)
    target = Path(out_dir) if out_dir else run.run_dir / GGUF_DIR
    with staged_folder(target) as tmp:
        _write(model, vocabulary, tmp / GGUF_FILE, weights, run.run_dir.name)
        checks = {"file": GGUF_FILE, "weights": weights, "checked_on": source, **_check(model, run, tmp, texts)}
        bound = TOLERANCE if weights == "f32" else None
        if bound is not None and checks["max_abs_diff"] > bound:
            raise LmtuneError(f"export: the GGUF file read back gives logits {checks['max_abs_diff']:.2e} away from "
                              f"the run's (more than {bound:g}) on {len(texts)} validation texts; nothing was written")
        checks["tolerance"] = bound
        (tmp / GGUF_CHECKS).write_text(json.dumps(checks, indent=2))
    return {**checks, "out": str(target / GGUF_FILE)}


# ---- what can be exported ---------------------------------------------------------------------------------

def _fp32_llama(run: LoadedRun) -> torch.nn.Module:
    model = plain_model(run)
    config = model.config
    kind = f"{config.model_type} {type(model).__name__}"
    if config.model_type != "llama" or not type(model).__name__.endswith("ForCausalLM"):
        raise LmtuneError(f"export: --format gguf takes Llama-architecture causal LMs (lmtune's scratch decoders, "
                          f"imported llama2.c models, Llama checkpoints); {run.run_dir} holds a {kind}")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise LmtuneError(f"export: {run.run_dir}: rope scaling {rope.get('rope_type')!r} is not written by lmtune's "
                          "GGUF export (default RoPE only)")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise LmtuneError(f"export: {run.run_dir}: a Llama with projection biases is not written by lmtune's GGUF "
                          "export")
    return model.float().eval()


def _tokenizer_description(run: LoadedRun) -> dict[str, Any]:
    """The tokenizer as GGUF describes it: its kind, tokens by id, their types and scores, merges, special ids."""
    tokenizer = run.tokenizer
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state["model"]
    pre = json.dumps(state.get("pre_tokenizer"))
    if model.get("type") != "BPE":
        raise LmtuneError(f"export: {run.run_dir}: a {model.get('type')} tokenizer cannot be written to GGUF by "
                          "lmtune (BPE only: byte-level, or with byte fallback)")
    kind = "gpt2" if "ByteLevel" in pre else "llama" if model.get("byte_fallback") else None
    if kind is None:
        raise LmtuneError(f"export: {run.run_dir}: the tokenizer is BPE without byte-level pieces or byte fallback, "
                          "which GGUF does not describe")
    vocab = {**model["vocab"], **{t["content"]: t["id"] for t in state.get("added_tokens", [])}}
    tokens = [""] * (max(vocab.values()) + 1)
    for token, index in vocab.items():
        tokens[index] = token
    special = {t["content"] for t in state.get("added_tokens", []) if t.get("special")}
    types = [_token_type(token, special, tokenizer.unk_token) for token in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    ids = {name: getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "unk", "pad")}
    add_bos = tokenizer("a")["input_ids"][:1] == [ids["bos"]] if ids["bos"] is not None else False
    return {"kind": kind, "tokens": tokens, "types": types, "merges": merges, "ids": ids, "add_bos": add_bos,
            "scores": [-float(i) for i in range(len(tokens))]}


def _token_type(token: str, special: set[str], unk: str | None) -> int:
    if token == unk:
        return _UNKNOWN
    if token in special:
        return _CONTROL
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        return _BYTE
    return _NORMAL


FALLBACK_TEXTS = ("Once upon a time, there was a little girl named Lily. She loved to play outside.",
                  "The quick brown fox jumps over the lazy dog; 12 + 30 = 42!",
                  "Tom said, \"I am happy today.\" Then he ran home to his mom.")
"""What the check reads when the run has no text data of its own (an imported checkpoint)."""


def _validation_texts(run: LoadedRun, rows: int) -> tuple[list[str], str]:
    """Up to ``rows`` texts of the run's validation (else training) data, and where they came from."""
    from lmtune.data.splits import load_tables

    try:
        tables = load_tables(run.config.data, run.task)
    except LmtuneError:  # an imported checkpoint's "data" is the checkpoint itself
        return list(FALLBACK_TEXTS), "built-in sentences (the run has no text data)"
    table = tables.get("validation") or tables["train"]
    column = run.config.data.text
    texts = [str(row[column]) for row in table.head(rows).rows if str(row.get(column) or "").strip()]
    if not texts:
        raise LmtuneError(f"export: {table.source} gives no text to check the GGUF file on")
    return texts, str(table.source)


# ---- writing ----------------------------------------------------------------------------------------------

def _write(model: torch.nn.Module, vocabulary: dict[str, Any], path: Path, weights: str, name: str) -> None:
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[weights])
    _write_tokenizer(writer, vocabulary, config.vocab_size)
    for tensor_name, tensor in _gguf_tensors(model):
        _add_tensor(writer, tensor_name, tensor, weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_tokenizer(writer: Any, vocabulary: dict[str, Any], vocab_size: int) -> None:
    tokens, types = list(vocabulary["tokens"]), list(vocabulary["types"])
    # the embedding may have more rows than the tokenizer has tokens (padded vocabularies): name the rest
    for index in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{index}]")
        types.append(4)  # user-defined: never produced by the merges
    writer.add_tokenizer_model(vocabulary["kind"])
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores(vocabulary["scores"] + [-1e9] * (len(tokens) - len(vocabulary["scores"])))
    if vocabulary["merges"]:
        writer.add_token_merges(vocabulary["merges"])
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if vocabulary["ids"][name] is not None:
            add(vocabulary["ids"][name])
    writer.add_add_bos_token(bool(vocabulary["add_bos"]))
    writer.add_add_eos_token(False)


def _gguf_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(llama.cpp name, tensor) for every weight; the output matrix only when it is not the tied embedding."""
    config = model.config
    state = model.state_dict()
    out = [("token_embd.weight", state["model.embed_tokens.weight"])]
    for layer in range(config.num_hidden_layers):
        for ours, theirs in _LAYER.items():
            tensor = state[f"model.layers.{layer}.{ours}.weight"]
            if theirs == "attn_q":
                tensor = _pairwise_rotation(tensor, config.num_attention_heads)
            elif theirs == "attn_k":
                tensor = _pairwise_rotation(tensor, config.num_key_value_heads)
            out.append((f"blk.{layer}.{theirs}.weight", tensor))
    out.append(("output_norm.weight", state["model.norm.weight"]))
    if not config.tie_word_embeddings:
        out.append(("output.weight", state["lm_head.weight"]))
    return out


def _pairwise_rotation(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a query/key projection reordered from transformers' half-split rotary layout (dimension i pairs
    with i + d/2 within a head) to llama.cpp's interleaved one (2i with 2i + 1)."""
    rows, columns = weight.shape
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, columns).transpose(1, 2).reshape(rows, columns)


def _add_tensor(writer: Any, name: str, tensor: torch.Tensor, weights: str) -> None:
    import gguf

    data = tensor.detach().float().cpu().numpy()
    if data.ndim == 1 or weights == "f32":
        writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
    elif weights == "f16":
        writer.add_tensor(name, data.astype(np.float16))
    else:
        kind = gguf.GGMLQuantizationType.Q8_0
        if data.shape[-1] % gguf.GGML_QUANT_SIZES[kind][0]:  # a row that does not split into blocks stays f16
            writer.add_tensor(name, data.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)


# ---- the check --------------------------------------------------------------------------------------------

def _check(model: torch.nn.Module, run: LoadedRun, folder: Path, texts: list[str]) -> dict[str, Any]:
    """The file read back by transformers: its tokenizer's ids and its model's logits against the run's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # the loader draws its own progress bar on stderr, outside transformers' switch for them
        with contextlib.redirect_stderr(io.StringIO()):
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
            back = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32).eval()
    except Exception as err:  # noqa: BLE001 - any failure to read the file back means the export is not kept
        raise LmtuneError(f"export: transformers could not read the GGUF file back ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:200]}); nothing was written") from None
    worst, tokens, agreed = 0.0, 0, 0
    for text in texts:
        ours = run.tokenizer(text, truncation=True, max_length=run.config.train.max_length)["input_ids"]
        theirs = tokenizer(text, truncation=True, max_length=run.config.train.max_length)["input_ids"]
        if ours != theirs:
            raise LmtuneError(f"export: the tokenizer read back from the GGUF file encodes {text[:40]!r} as "
                              f"{theirs[:8]}... where the run's gives {ours[:8]}...; nothing was written")
        ids = torch.tensor([ours])
        with torch.inference_mode():
            expected, got = model(input_ids=ids).logits, back(input_ids=ids).logits
        worst = max(worst, float((expected - got).abs().max()))
        agreed += int((expected.argmax(-1) == got.argmax(-1)).sum())
        tokens += len(ours)
    return {"texts": len(texts), "tokens": tokens, "max_abs_diff": worst, "same_token_ids": True,
            "top1_agreement": agreed / tokens}

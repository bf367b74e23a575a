"""lmtune: pretrain, fine-tune, compare strategies, diagnose and explain transformer language models."""

from lmtune.about import __version__  # noqa: F401  (lmtune.__version__)
from lmtune.config import RunConfig
from lmtune.errors import ConfigError, DataError, LmtuneError
from lmtune.openmp import keep_thread_count_fixed

keep_thread_count_fixed()  # before any tensor work: see lmtune.openmp


def load_config(source, overrides=()):
    """A run config from a YAML path (or a dict) with ``key=value`` overrides, checked; see
    `lmtune.loader.load_config` (imported here on first use: ``import lmtune`` stays light)."""
    from lmtune.loader import load_config as load

    return load(source, overrides)


def train(config, overrides=(), **options):
    """Train as ``config`` (a RunConfig, YAML path or dict) says; see `lmtune.review.train_and_review` for
    ``options``."""
    from lmtune.review import train_and_review

    if isinstance(config, dict):
        config = load_config(config, overrides)
        overrides = ()
    return train_and_review(config, overrides, **options)


def load(run_dir, backend="torch"):
    """Load a finished run for ``.predict([...])`` and ``.evaluate(path)``; ``backend``: torch, or onnx / onnx-int8
    (the graph `lmtune export RUN --format onnx` wrote, on onnxruntime); see `lmtune.inference.load`."""
    from lmtune import inference

    return inference.load(run_dir, backend)


def generate(run_dir, prompt, on_text=None, **options):
    """Continue ``prompt`` with a causal_lm run (sft: answer it); options: max_new_tokens, temperature
    (0: greedy), top_k, top_p, repetition_penalty, seed. ``on_text`` receives the text as it streams."""
    return load(run_dir).generate(prompt, on_text=on_text, **options)


def import_llama2c(path, out):
    """Convert a llama2.c checkpoint (its .bin, or the folder with its tok*.bin) into run directory ``out``."""
    from lmtune.llama2c import import_llama2c as convert

    return convert(path, out)


def compare(config, strategies, overrides=(), **options):
    """Compare strategies on ``config`` (a RunConfig, YAML path or dict); see `lmtune.comparison.compare`.

    Returns the leaderboard (``.rows``, ``.winner``, ``.text()``).
    """
    from lmtune.comparison import compare as run_compare

    if not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    return run_compare(config, list(strategies), **options)


def make_pairs(run_dir, prompts, judge, out, label=None, **options):
    """Preference pairs from a run's samples ranked by a judge (a classification run with ``label``, or
    ``"module:function"``), written to ``out``; ``options``: settings (`lmtune.pairs.PairSettings`),
    judge_reply_only. Returns the counts (prompts, pairs, ties, ...); see `lmtune.pairs.make_pairs`."""
    from lmtune.pairs import make_pairs as make

    return make(run_dir, prompts, judge, out, label, **options)


def export(run_dir, out_dir=None, merge=False, format="transformers", quantize=None):
    """Write a run's model elsewhere, as `lmtune export` does.

    ``format``: transformers (plain weights; LoRA merged with ``merge``; returns the directory), onnx (checked on
    onnxruntime; ``quantize="int8"`` adds an int8 graph) or gguf (a Llama-family decoder and its tokenizer, read
    back and checked; ``quantize``: f16 or q8_0 weights). onnx and gguf return their checks (also written beside
    the file).
    """
    takes = {"transformers": (), "onnx": ("int8",), "gguf": ("f16", "q8_0")}
    if format not in takes:
        raise LmtuneError(f"format {format!r}: formats are {', '.join(takes)}")
    if quantize is not None and quantize not in takes[format]:
        options = "; ".join(f"{name} {' or '.join(q)}" for name, q in takes.items() if q)
        raise LmtuneError(f"quantize {quantize!r}: not with format {format} (it takes: {options})")
    if format == "onnx":
        from lmtune.onnx_export import export_onnx

        return export_onnx(run_dir, out_dir, quantize=quantize)
    if format == "gguf":
        from lmtune.gguf_export import export_gguf

        return export_gguf(run_dir, out_dir, weights=quantize or "f32")
    from lmtune.exporting import export as write

    return write(run_dir, out_dir, merge=merge)


def merge(runs, out, method="linear", weights=None, density=0.5, seed=0):
    """Merge LoRA ``runs`` of one base into the new run ``out`` (linear, ties, dare_linear, dare_ties); returns
    the settings and every model's scores on every parent's validation set (also in ``out/merge.json``)."""
    from lmtune.merging import merge_runs

    return merge_runs(list(runs), out, method, weights, density, seed)


def harness(run_dir, tasks, limit=None):
    """lm-evaluation-harness ``tasks`` (names or task YAML paths) on the run's model and on the model it started
    from, side by side with each difference's standard error; also recorded in ``RUN/harness.json``."""
    from lmtune.lm_harness import evaluate_harness

    return evaluate_harness(run_dir, [tasks] if isinstance(tasks, str) else list(tasks), limit=limit)


def diagnose(run_dir, data_curve=False):
    """The run's diagnosis (``.state``, ``.findings``, ``.text()``); with its data curve when ``data_curve``."""
    from lmtune import diagnosis

    result = diagnosis.diagnose(run_dir)
    if not data_curve:
        return result
    from lmtune.comparison import data_curve as curve

    return result, curve(run_dir)


def explain(run_dir, texts, out_dir=None, **options):
    """Explanations (attention tensors, rollout, attributions, checks) of ``texts`` under a run's model.

    With ``out_dir`` the PNGs, explain.html and explain.json are written there as well; ``options``:
    methods, target, steps, checks, compare_base (see `lmtune.explanation.explain_run`).
    """
    from lmtune.explanation import explain_run

    return explain_run(run_dir, list(texts), out_dir, pictures=out_dir is not None, write=out_dir is not None,
                       **options)


def serve(runs, backend="torch", **limits):
    """The ASGI app of `lmtune serve` for ``runs`` (run directories, or NAME=RUN), to mount in other ASGI code or
    run with any ASGI server; ``backend``: torch, onnx or onnx-int8 (the exported graphs, on onnxruntime);
    ``limits``: the fields of `lmtune.serving.Limits` (max_batch_size, ...)."""
    import os

    from lmtune.serving import Limits, create_app

    single = isinstance(runs, str) or isinstance(runs, os.PathLike)
    return create_app([os.fspath(r) for r in ([runs] if single else runs)], Limits(**limits), backend)


def report(run_dir, out=None):
    """Write the run's self-contained HTML report (default RUN/report.html); returns its path."""
    from lmtune.reporting import write_report

    return write_report(run_dir, out)


__all__ = ["ConfigError", "DataError", "LmtuneError", "RunConfig", "compare", "export", "load", "load_config",
           "train", "diagnose", "harness", "merge", "explain", "report", "generate", "import_llama2c", "serve",
           "make_pairs"]

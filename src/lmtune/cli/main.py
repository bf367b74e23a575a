"""``lmtune`` command line: a table of subcommands, each a thin layer over the Python API's modules."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from pathlib import Path

from lmtune.errors import LmtuneError, Stopped

DESCRIPTION = """Pretrain, fine-tune, compare strategies, diagnose and explain transformer language models.

A run directory (what `lmtune train` writes: config, checkpoints, metrics, the final model) is what the
other commands take. `lmtune COMMAND --help` describes each one."""
EPILOG = """the commands by job:
  make a run          train (fine-tune or pretrain; resumes an unfinished run), compare (strategies, with a
                      winner), import (a llama2.c checkpoint), pairs (preference data from a model and a judge),
                      merge (LoRA runs of one base: linear, TIES, DARE)
  use a finished run  eval (also harness benchmarks, before vs after), predict, generate, serve (HTTP,
                      OpenAI-compatible, several adapters on one base), export (plain weights, ONNX, GGUF)
  look into a run     diagnose, report, explain, runs (list run directories), track (to MLflow and others)
  look at data        data preview (rows rendered and tokenized as training will, loss tokens marked)

documentation: README.md and the docs/ site (mkdocs build)"""
EXIT_USAGE = 2
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO)
"""Write failures the user must fix (disk full, quota, read-only, permissions): one line, not a traceback."""


def _train(args: argparse.Namespace) -> int:
    from lmtune.review import train_and_review
    from lmtune.training import interrupt

    interrupt.install()
    metrics = train_and_review(args.config, _with_report_to(args))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one summary line, not one per process
        sys.stdout.write(json.dumps(_headline(metrics)) + "\n")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from lmtune.inference import load

    if args.harness:
        return _harness(args)
    if not args.data:
        raise LmtuneError("eval: give --data FILE (labelled rows) or --harness TASK[,TASK...]")
    metrics = load(args.run).evaluate(args.data, args.max_samples)
    if args.json:
        sys.stdout.write(json.dumps(metrics) + "\n")
    else:
        for key, value in metrics.items():
            if isinstance(value, int) and not isinstance(value, bool):  # counts (e.g. tokens)
                sys.stdout.write(f"{key:>12}  {value}\n")
            elif isinstance(value, float):
                sys.stdout.write(f"{key:>12}  {value:.4f}\n")
    return 0


def _harness(args: argparse.Namespace) -> int:
    from lmtune.lm_harness import evaluate_harness

    tasks = [t.strip() for t in args.harness.split(",") if t.strip()]
    result = evaluate_harness(args.run, tasks, limit=args.max_samples)
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    sys.stdout.write(f"{'task':<20} {'metric':<12} {'before':>10} {'after':>10}  difference (± standard error)\n")
    for name, entry in result["tasks"].items():
        for metric, row in entry["metrics"].items():
            before = f"{row['before']:>10.4f}" if "before" in row else f"{'-':>10}"
            change = (f"{row['difference']:+.4f} ± {row['difference_se']:.4f} ({row['se_kind']})"
                      if row.get("difference_se") is not None else f"{row['difference']:+.4f}"
                      if "difference" in row else "")
            sys.stdout.write(f"{name:<20} {metric:<12} {before} {row['after']:>10.4f}  {change}\n")
    sys.stdout.write(f"before: {result['before']}; {entry['documents']} documents per task; recorded in "
                     f"{Path(args.run) / 'harness.json'}\n")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from lmtune.data import read_stdin, read_table
    from lmtune.inference import load
    from lmtune.rundir import write_text_atomic

    run = load(args.run, args.backend)
    table = read_stdin() if args.input == "-" else read_table(args.input, "test")
    texts = [row.get(run.config.data.text, row.get("text")) for row in table.rows]
    lines = [
        json.dumps({"text": text, **prediction})
        for text, prediction in zip(texts, run.predict(table), strict=True)
    ]
    output = "".join(line + "\n" for line in lines)
    if args.output:
        try:
            write_text_atomic(Path(args.output), output)
        except OSError as err:
            raise LmtuneError(f"--output: cannot write {args.output} ({err.strerror or err})") from None
    else:
        sys.stdout.write(output)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from lmtune.generation import GenerationSettings
    from lmtune.inference import load

    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                                  seed=args.seed)
    run = load(args.run)

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    text = run.generate(args.prompt, settings, on_text=None if args.no_stream else show)
    sys.stdout.write(("" if not args.no_stream else text) + "\n")
    return 0


def _pairs(args: argparse.Namespace) -> int:
    from lmtune.generation import GenerationSettings
    from lmtune.pairs import PairSettings, make_pairs

    generation = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                    top_p=args.top_p, seed=args.seed)
    settings = PairSettings(samples=args.samples, generation=generation, min_gap=args.min_gap)
    counts = make_pairs(args.run, args.prompts, args.judge, args.out, args.label, settings, args.judge_reply_only)
    sys.stdout.write(json.dumps(counts) + "\n")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from lmtune.serving import Limits, run_server

    limits = Limits(**{f.name: getattr(args, f.name) for f in fields(Limits) if getattr(args, f.name) is not None})
    return run_server(args.runs, args.host, args.port, limits, args.log_level, args.backend)


def _import(args: argparse.Namespace) -> int:
    from lmtune.llama2c import import_llama2c

    out = import_llama2c(args.path, args.out)
    sys.stderr.write(f"lmtune: imported {args.path} into {out}\n")
    return 0


def _export(args: argparse.Namespace) -> int:
    import lmtune  # the Python API's export: one place that checks the format and quantization and dispatches

    done = lmtune.export(args.run, args.out, merge=args.merge, format=args.format, quantize=args.quantize)
    if args.format == "onnx":
        sys.stdout.write(_onnx_line(done) + "\n")
    elif args.format == "gguf":
        bound = f" (bound {done['tolerance']:g})" if done["tolerance"] is not None else ""
        sys.stdout.write(f"{done['out']}: {done['weights']}; read back by transformers: the same token ids on "
                         f"{done['texts']} texts, largest |logit difference| {done['max_abs_diff']:.2e}{bound}, "
                         f"top-1 token agreement {done['top1_agreement']:.4f}\n")
    else:
        sys.stdout.write(f"{done}\n")
    return 0


def _onnx_line(checks: dict) -> str:
    line = (f"{checks['out']}: largest |logit difference| onnxruntime vs PyTorch fp32 {checks['max_abs_diff']:.2e} "
            f"on {checks['rows']} validation rows (bound {checks['tolerance']:g})")
    int8 = checks.get("int8", {})
    if "torch" in int8:
        line += "; int8: " + ", ".join(f"{k} {int8['torch'][k]:g} -> {int8['int8'][k]:g}" for k in int8["torch"])
    return line


def _data_preview(args: argparse.Namespace) -> int:
    from lmtune.data_preview import preview

    for row in preview(args.config, args.overrides, args.rows):
        for sequence in row["sequences"]:
            name = f" ({sequence['name']})" if sequence["name"] else ""
            counts = (f"{sequence['tokens']} tokens, {sequence['loss_tokens']} carry loss"
                      if sequence["loss_tokens"] is not None else f"{sequence['tokens']} tokens, label "
                      f"{sequence['label']!r}")
            sys.stdout.write(f"--- {row['where']}{name}: {counts}\n{sequence['text']}\n")
    sys.stdout.write("(the text between ⟦ and ⟧ carries the loss; special tokens are shown)\n")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from lmtune.merging import merge_runs

    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise LmtuneError(f"--weights: {args.weights!r} is not a comma-separated list of numbers") from None
    result = merge_runs(args.runs, args.out, args.method, weights, args.density, args.seed)
    metric = result["metric"]["name"]
    names = list(result["scores"][0][metric])
    sys.stdout.write(f"{metric} on each parent's validation set ({result['method']} merge, weights "
                     f"{', '.join(f'{w:g}' for w in result['weights'])}):\n")
    sys.stdout.write(f"{'validation of':<24}" + "".join(f"{n:>14}" for n in names) + "\n")
    for row in result["scores"]:
        cells = "".join(f"{row[metric][n]:>14.4f}" if isinstance(row[metric][n], (int, float)) else f"{'-':>14}"
                        for n in names)
        sys.stdout.write(f"{row['parent']:<24}{cells}\n")
    sys.stdout.write(f"merged run: {args.out} (scores in {Path(args.out) / 'merge.json'})\n")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from lmtune.comparison import compare
    from lmtune.loader import load_config

    config = load_config(args.config, _with_report_to(args))
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    board = compare(config, strategies, seeds=args.seeds, trials=args.trials, budget=args.budget,
                    storage=args.storage, out_dir=args.out, prune=not args.no_prune, heartbeat=args.heartbeat,
                    run=not args.leaderboard, vary=_varied(args.vary))
    sys.stdout.write(board.text() + "\n")
    return 0


def _varied(options: list[str] | None) -> dict[str, list[str]]:
    """``--vary KEY=V1,V2`` options as {KEY: [V1, V2]}."""
    out: dict[str, list[str]] = {}
    for option in options or []:
        key, _, values = option.partition("=")
        choices = [v.strip() for v in values.split(",") if v.strip()]
        if "." not in key or not choices or key.startswith("strategy."):
            raise LmtuneError(f"--vary: {option!r} is not SECTION.KEY=VALUE,VALUE (e.g. preference.loss=dpo,ipo; "
                              "strategies are chosen with --strategies)")
        out[key.strip()] = choices
    return out


def _with_report_to(args: argparse.Namespace) -> list[str]:
    return list(args.overrides) + ([f"tracking.report_to={args.report_to}"] if args.report_to else [])


def _track(args: argparse.Namespace) -> int:
    from lmtune.trackers.replay import replay

    trackers = [t.strip() for t in args.to.split(",") if t.strip()]
    summary = replay(args.run, trackers, args.mlflow_uri)
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


def _runs(args: argparse.Namespace) -> int:
    from lmtune.run_list import list_runs, table

    found = list_runs(args.dir)
    if args.json:
        sys.stdout.write("".join(json.dumps(run) + "\n" for run in found))
    else:
        sys.stdout.write(table(found) + "\n")
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    from lmtune.comparison import data_curve
    from lmtune.diagnosis import diagnose

    diagnosis = diagnose(args.run)
    curve = data_curve(args.run) if args.data_curve else None
    if args.json:
        out = diagnosis.to_dict() | ({"data_curve": curve.to_dict()} if curve else {})
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        sys.stdout.write(diagnosis.text() + "\n" + (f"\n{curve.text()}\n" if curve else ""))
    return 0


def _report(args: argparse.Namespace) -> int:
    from lmtune.reporting import write_report

    sys.stdout.write(f"{write_report(args.run, args.out)}\n")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from lmtune.data import read_table
    from lmtune.explanation import explain_run, summary
    from lmtune.rundir import read_run

    texts: list = list(args.text or [])
    if args.input:
        _, cfg, _ = read_run(args.run)
        table = read_table(args.input, "explain")
        column = cfg.data.text if cfg.data.text in table.columns else "text"
        table.require(column)
        pairs = table.texts(cfg.data.text_pair) if cfg.data.text_pair in table.columns else None
        rows = table.texts(column)[: args.max_inputs]
        texts += list(zip(rows, pairs, strict=False)) if pairs else rows
    methods = tuple(m.strip() for m in args.method.split(",") if m.strip())
    results = explain_run(args.run, texts, args.out, methods, args.target, args.steps, checks=not args.no_checks,
                          compare_base=not args.no_base, pictures=not args.no_png)
    for e in results:
        sys.stdout.write(json.dumps({"text": e.text, "predicted": e.predicted, "target": e.target,
                                     "probability": round(e.probability, 4),
                                     "top_words": _top_words(e, methods[0])}) + "\n")
    sys.stdout.write(json.dumps({"summary": summary(results)}) + "\n")
    return 0


def _top_words(explanation, method: str, k: int = 3) -> list[str]:
    scores = explanation.word_attributions(method)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return [explanation.words[i] for i in order[:k]]


def _headline(metrics: dict) -> dict:
    """The scalar metrics of a finished run (tables stay in metrics.json)."""
    out = {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}
    for split in ("validation", "test"):
        for key, value in metrics.get(split, {}).items():
            if isinstance(value, (int, float)):
                out[f"{split}_{key}"] = value
    return out


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    from lmtune.about import __version__

    parser = argparse.ArgumentParser(prog="lmtune", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lmtune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_training_commands, _inference_commands, _insight_commands):
        add(sub)
    return parser


def _report_to_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report-to", help="experiment trackers, comma-separated (mlflow, tensorboard, wandb, "
                                       "trackio): the same as tracking.report_to=...")


def _pairs_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pairs", help="make preference pairs: sample completions from a run, rank them with a judge")
    p.add_argument("run", help="run directory of the model that samples (a language model run)")
    p.add_argument("--prompts", required=True, help="file of prompts: a 'prompt' or 'text' column (text or chat "
                                                    "messages), or plain lines")
    p.add_argument("--judge", required=True, help="a classification run directory, or module:function given "
                                                  "(prompt, completions) and returning one score per completion")
    p.add_argument("--label", help="with a classification judge: the label whose probability is the score")
    p.add_argument("--judge-reply-only", action="store_true",
                   help="a classification judge reads the completion alone (default: prompt + completion)")
    p.add_argument("--out", required=True, help="JSONL of prompt/chosen/rejected rows (with their scores)")
    p.add_argument("--samples", type=_positive, default=4, help="completions per prompt (default 4)")
    p.add_argument("--max-new-tokens", type=_positive, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0, help="seed of the first sample (sample k uses seed + k)")
    p.add_argument("--min-gap", type=float, default=0.0,
                   help="no pair for a prompt whose best and worst scores are this close (default 0)")
    p.set_defaults(func=_pairs)


def _compare_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="train several strategies on the config's data and pick a winner")
    p.add_argument("config", help="run config YAML (data, model, task, training budget)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--strategies", default="full,freeze,head,lora,bitfit", help="comma-separated strategy names")
    p.add_argument("--seeds", type=_positive, default=1, help="runs per setting (mean ± std)")
    p.add_argument("--trials", type=_positive, default=1,
                   help="settings per strategy: 1 = defaults; more adds tuned lr, warmup, LoRA r, freeze k, LLRD decay")
    p.add_argument("--budget", type=_positive, default=None, help="optimizer steps per trial")
    p.add_argument("--storage", help="Optuna storage URL shared by several machines (default: SQLite in --out)")
    p.add_argument("--out", help="comparison directory (default: <output>-compare)")
    p.add_argument("--no-prune", action="store_true", help="run every trial to the end")
    p.add_argument("--heartbeat", type=float, default=60.0,
                   help="seconds between a worker's signs of life in a shared --storage; a trial whose worker "
                        "misses three runs again elsewhere (default 60)")
    p.add_argument("--leaderboard", action="store_true",
                   help="print the leaderboard from the storage and exit (any worker, or none, can)")
    p.add_argument("--vary", action="append", metavar="KEY=V1,V2",
                   help="also compare these values of a setting (repeatable; every strategy runs with every "
                        "combination), e.g. --vary preference.loss=dpo,ipo --vary preference.beta=0.1,0.5")
    _report_to_option(p)
    p.set_defaults(func=_compare)


def _training_commands(sub: argparse._SubParsersAction) -> None:
    """train, compare, import, export: commands that write run directories."""
    p = sub.add_parser("train", help="fine-tune or pretrain as a YAML config says (resumes an unfinished run)")
    p.add_argument("config", help="run config YAML")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=2e-5")
    _report_to_option(p)
    p.set_defaults(func=_train)

    _compare_command(sub)
    _pairs_command(sub)

    p = sub.add_parser("track", help="log an existing run directory to experiment trackers (MLflow, ...)")
    p.add_argument("run", help="run directory")
    p.add_argument("--to", required=True, help="comma-separated trackers: mlflow, tensorboard, wandb, trackio")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: the run's tracking.mlflow_uri, "
                                        "MLFLOW_TRACKING_URI, or MLflow's default)")
    p.set_defaults(func=_track)

    p = sub.add_parser("runs", help="list run directories: task, model, strategy, status, best metric, age")
    p.add_argument("dir", nargs="?", default="runs", help="folder holding run directories (default: runs)")
    p.add_argument("--json", action="store_true", help="one JSON object per run, one per line")
    p.set_defaults(func=_runs)

    p = sub.add_parser("import", help="convert a foreign checkpoint into a run directory")
    p.add_argument("format", choices=["llama2c"], help="checkpoint format")
    p.add_argument("path", help="llama2.c: the checkpoint .bin, or the folder holding it and its tok*.bin")
    p.add_argument("out", help="run directory to create")
    p.set_defaults(func=_import)

    _merge_command(sub)
    _export_command(sub)
    _data_command(sub)


def _data_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="look at a config's data as training will see it")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("preview", help="the first training rows, rendered and tokenized as training does, "
                                           "with the tokens that carry loss marked")
    q.add_argument("config", help="run config YAML")
    q.add_argument("overrides", nargs="*", help="key=value overrides")
    q.add_argument("--rows", type=_positive, default=3, help="rows to show (default 3)")
    q.set_defaults(func=_data_preview)


def _merge_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge LoRA runs of one base into a new run (linear, TIES, DARE), scored "
                                     "against its parents on their validation sets")
    p.add_argument("runs", nargs="+", metavar="RUN", help="LoRA run directories of one base and task")
    p.add_argument("--out", required=True, help="the new run directory")
    p.add_argument("--method", choices=["linear", "ties", "dare_linear", "dare_ties"], default="linear",
                   help="linear: weighted sum of the LoRA updates; ties: trim, elect signs, average; dare_*: random "
                        "drop and rescale, then sum or TIES (default linear)")
    p.add_argument("--weights", help="one weight per run, comma-separated (default: equal)")
    p.add_argument("--density", type=float, default=0.5, help="ties/dare: share of each update kept (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="dare: seed of the random drops")
    p.set_defaults(func=_merge)


def _export_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a run's model as plain transformers weights, or as ONNX or GGUF "
                                      "(checked against the run)")
    p.add_argument("run", help="run directory")
    p.add_argument("--merge", action="store_true", help="fold LoRA adapters into the base weights")
    p.add_argument("--format", choices=["transformers", "onnx", "gguf"], default="transformers",
                   help="onnx: an ONNX graph (LoRA merged), checked on onnxruntime against PyTorch on validation rows; "
                        "gguf: one llama.cpp file of a Llama-architecture decoder and its tokenizer, read back by "
                        "transformers and checked")
    p.add_argument("--quantize", choices=["int8", "f16", "q8_0"],
                   help="onnx: int8 (also an int8 graph, its metrics stated); gguf: f16 or q8_0 weights (default f32)")
    p.add_argument("--out", help="output directory (default RUN/merged, RUN/onnx or RUN/gguf)")
    p.set_defaults(func=_export)


def _inference_commands(sub: argparse._SubParsersAction) -> None:
    """eval, predict, generate: commands that use a finished run."""
    p = sub.add_parser("eval", help="metrics of a finished run on labelled data, or harness "
                                    "benchmarks before vs after tuning")
    p.add_argument("run", help="run directory")
    p.add_argument("--data", help="labelled CSV/TSV/JSONL/Parquet file")
    p.add_argument("--harness", metavar="TASK[,TASK...]",
                   help="lm-evaluation-harness tasks (names, or paths of task YAML files) on the run's model and on "
                        "the model it started from, side by side; recorded in RUN/harness.json")
    p.add_argument("--max-samples", type=_positive, default=None,
                   help="evaluate the first N rows (with --harness: documents per task) only")
    p.add_argument("--json", action="store_true", help="print one JSON object of metrics")
    p.set_defaults(func=_eval)

    p = sub.add_parser("predict", help="predictions of a finished run for new inputs, as JSONL")
    p.add_argument("run", help="run directory")
    p.add_argument("--input", required=True, help="CSV/TSV/JSONL/text file, or - for stdin")
    p.add_argument("--output", help="write JSONL here instead of stdout")
    _backend_option(p)
    p.set_defaults(func=_predict)

    p = sub.add_parser("generate", help="continue a prompt with a causal_lm run, or answer one with an sft run")
    p.add_argument("run", help="run directory")
    p.add_argument("--prompt", required=True, help="the text to continue (sft: the instruction)")
    p.add_argument("--max-new-tokens", type=_positive, default=128, help="generate at most this many tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sample")
    p.add_argument("--top-k", type=_positive, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample among the tokens holding probability p")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeated tokens")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampling")
    p.add_argument("--no-stream", action="store_true", help="print the text when it is complete")
    p.set_defaults(func=_generate)

    p = sub.add_parser("serve", help="serve runs over HTTP: predict, explain, OpenAI-compatible generation")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directory, or NAME=RUN to name it")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _backend_option(p)
    _limit_options(p)
    p.set_defaults(func=_serve)


def _backend_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"], default="torch",
                   help="onnx / onnx-int8: run the graph `lmtune export RUN --format onnx` wrote, on onnxruntime")


def _limit_options(p: argparse.ArgumentParser) -> None:
    """One option per field of `lmtune.serving.Limits`, with its default and doc in the help."""
    from dataclasses import fields

    from lmtune.serving.limits import Limits

    docs = Limits.field_docs()
    for f in fields(Limits):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=float if isinstance(f.default, float) else int,
                       default=None, help=f"{docs[f.name]} Default: {f.default}.")


def _insight_commands(sub: argparse._SubParsersAction) -> None:
    """diagnose, report, explain: commands that look into a run."""
    p = sub.add_parser("diagnose", help="healthy, overfitting, underfitting, diverging, forgetting or a data "
                                        "problem? what next")
    p.add_argument("run", help="run directory")
    p.add_argument("--data-curve", action="store_true",
                   help="also retrain on 10%% and 30%% of the data: would more data help?")
    p.add_argument("--json", action="store_true", help="print the diagnosis as one JSON object")
    p.set_defaults(func=_diagnose)

    p = sub.add_parser("report", help="one self-contained HTML report of a run (RUN/report.html)")
    p.add_argument("run", help="run directory")
    p.add_argument("--out", help="write the report here instead of RUN/report.html")
    p.set_defaults(func=_report)

    p = sub.add_parser("explain", help="attention maps, rollout and token attributions for inputs, with checks")
    p.add_argument("run", help="run directory")
    p.add_argument("--text", action="append", help="an input to explain (repeat for several)")
    p.add_argument("--input", help="CSV/TSV/JSONL/text file of inputs")
    p.add_argument("--max-inputs", type=_positive, default=50, help="explain at most this many rows of --input")
    p.add_argument("--out", help="output directory (default RUN/explain)")
    p.add_argument("--method", default="ig,gradxinput,occlusion", help="attribution methods: ig, gradxinput, occlusion")
    p.add_argument("--target", help="label to explain (default: the predicted one)")
    p.add_argument("--steps", type=_positive, default=50, help="Integrated Gradients steps")
    p.add_argument("--no-checks", action="store_true", help="skip the deletion test and the randomization check")
    p.add_argument("--no-base", action="store_true", help="skip the before/after comparison with the base model")
    p.add_argument("--no-png", action="store_true", help="write explain.html and explain.json only")
    p.set_defaults(func=_explain)

def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    # under torchrun the main process speaks for all (each said "model: loading ...", "memory: ..." once per
    # process); every process still prints its warnings and errors
    main_process = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING, format="lmtune: %(message)s",
                        stream=sys.stderr)
    try:
        return args.func(args)
    except Stopped as stop:  # SIGTERM during training, checkpoint written
        sys.stderr.write(f"lmtune: {stop}\n")
        return 128 + stop.signum
    except LmtuneError as err:
        if args.debug:
            raise
        sys.stderr.write(f"lmtune: error: {err}\n")
        return EXIT_USAGE
    except OSError as err:
        if args.debug or err.errno not in _DISK_ERRORS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        sys.stderr.write(f"lmtune: error: {where}{err.strerror}; fix that and run the same command again "
                         "(a training run resumes from its last checkpoint)\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("lmtune: interrupted; run the same command again to resume\n")
        return 130


def quiet_libraries() -> None:
    """Library chatter (weight-loading reports, advisory warnings) hides lmtune's own output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")  # deprecations
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score's tokenizer notes
    logging.getLogger("gguf").setLevel(logging.WARNING)  # the GGUF writer's notes on what it writes
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)  # "removed shared tensor" of tied weights
    hf_logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())

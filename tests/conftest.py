"""Offline, CPU-only test setup: shared data slices, a tiny model, an isolated cache."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

import pytest  # noqa: E402

from lmtune.serving.process import ServeProcess  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SST2 = SHARED_DATA / "sst2"


def unavailable(message: str, required_by: str) -> None:
    """A test's prerequisite is missing: fail where ``required_by`` (an environment variable) says it must be there
    (CI sets LMTUNE_REQUIRE_DATA, _BROWSER and _SERVICES), else skip. Nothing is skipped silently in CI."""
    if os.environ.get(required_by):
        pytest.fail(f"{message} (required here: {required_by} is set)")
    pytest.skip(message)


def shared(path: Path) -> Path:
    """``path`` under ../shared/data, which the integration tests read: missing fails in CI, skips elsewhere."""
    if not path.exists():
        unavailable(f"shared data not found at {path}", "LMTUNE_REQUIRE_DATA")
    return path


@pytest.fixture(autouse=True)
def _no_accelerate_state_left_behind():
    """A test that made an Accelerator and did not release it would make the next in-process `lmtune train` of
    another precision fail ("AcceleratorState has already been initialized"): every test ends with none."""
    yield
    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LMTUNE_CACHE", str(tmp_path_factory.getbasetemp() / "lmtune-cache"))


def write_tsv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_tsv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


@pytest.fixture(scope="session")
def sst2_slice(tmp_path_factory) -> dict[str, Path]:
    """Small slices of the real SST-2: 240 training and 120 dev sentences."""
    shared(SST2)
    out = tmp_path_factory.mktemp("sst2")
    train = read_tsv(SST2 / "train.tsv")[:240]
    dev = read_tsv(SST2 / "dev.tsv")[:120]
    return {
        "train": write_tsv(out / "train.tsv", train, ["sentence", "label"]),
        "dev": write_tsv(out / "dev.tsv", dev, ["sentence", "label"]),
    }


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def rendered_dom(page: Path, tmp_path: Path) -> str:
    """The page's DOM after headless Chromium loaded it and ran its scripts; asserts no script error.

    Skips where Chromium is missing, unless LMTUNE_REQUIRE_BROWSER is set (CI installs it).
    """
    if CHROMIUM is None:
        unavailable("chromium is not installed (scripts/setup.sh installs it with apt-get)", "LMTUNE_REQUIRE_BROWSER")
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout
    html_tag = re.search(r"<html[^>]*>", dom)
    assert html_tag and "data-error" not in html_tag.group(0), html_tag  # window.onerror marks script errors
    return dom


@pytest.fixture(scope="session")
def squad_slice(tmp_path_factory) -> dict[str, Path]:
    """Small slices of the article-level SQuAD split (scripts/squad_split.py): 40 train, 16 eval questions."""
    sys.path.insert(0, str(REPO / "scripts"))
    from squad_split import SQUAD, split, write

    shared(SQUAD)
    train, evaluation = split(SQUAD)
    out = tmp_path_factory.mktemp("squad")
    return {"train": write(train[:40], out / "train.jsonl"), "eval": write(evaluation[:16], out / "eval.jsonl")}


def kill_at_checkpoint(command: list[str], run_dir: Path, step: int, timeout: float = 300,
                       cwd: Path = REPO) -> None:
    """Start ``command`` (an `lmtune train`), SIGKILL it once checkpoint ``step`` is on disk, and wait."""
    import signal
    import time

    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not (run_dir / "checkpoints" / f"step-{step}" / "trainer_state.json").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@dataclass
class CliResult:
    """What an `lmtune` command run in process gave: its exit code, stdout, and stderr with the log lines."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str | Path, cwd: Path = REPO) -> CliResult:
    """Run `lmtune ARGS...` in this process, from ``cwd`` (the repository, like a user): the CLI's code path
    without a new interpreter's 5-6 s of imports. Tests about the process itself (an exit by signal, a kill, a
    real traceback on stderr) start one with `lmtune_command` instead. Tests whose command writes beside the
    current directory (MLflow's default artifact root) pass their own ``cwd``."""
    import io
    import logging
    from contextlib import chdir, redirect_stderr, redirect_stdout

    from lmtune.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("lmtune: %(message)s"))
    logger = logging.getLogger("lmtune")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with chdir(cwd), redirect_stdout(out), redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    """`run_cli` as a fixture, for tests that read better with it among their arguments."""
    return run_cli


def lmtune_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmtune", *args]


def trained_run_command(sst2_slice: dict[str, Path], out: Path) -> list[str]:
    """The `lmtune train` command of the shared run below (2 epochs on the SST-2 slice)."""
    return lmtune_command("train", str(REPO / "examples" / "sst2.yaml"), f"data.train={sst2_slice['train']}",
                          f"data.validation={sst2_slice['dev']}", f"output={out}", "train.epochs=2",
                          "train.batch_size=16", "train.eval_every=10", "train.lr=1e-4", "train.log_every=5")


def make_tiny_bert(out: Path, layers: int = 2, hidden: int = 32, masked_lm: bool = False) -> Path:
    """A randomly initialised BERT (width ``hidden``) with the bundled tokenizer, saved to ``out``.

    ``masked_lm``: with a masked-LM head instead of a classification head.
    """
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertForSequenceClassification

    from lmtune.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("bundled:minilm"))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128)
    (BertForMaskedLM if masked_lm else BertForSequenceClassification)(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


DECODER_FAMILIES = {
    # model_type: the shape arguments of its transformers config (2 layers, width 64, grouped-query attention)
    "llama": {}, "qwen2": {}, "qwen3": {"head_dim": 16}, "gemma": {"head_dim": 16}, "gemma2": {"head_dim": 16},
    "gemma3_text": {"head_dim": 16}, "mistral": {}, "phi3": {},
    "gpt2": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256},
    "gpt_neox": {"num_key_value_heads": None}, "opt": {"ffn_dim": 128, "word_embed_proj_dim": 64},
}
"""Decoder families people fine-tune, as tiny random models built from their transformers configs."""


def make_tiny_decoder(family: str, out: Path, texts: list[str]) -> Path:
    """A 2-layer, 64-wide ``family`` decoder with random weights and a byte-level BPE tokenizer trained on
    ``texts`` (BOS = EOS = PAD = <|endoftext|>), saved to ``out``: no download needed."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmtune.scratch import SPECIAL, train_tokenizer

    tokenizer = train_tokenizer(texts, 400)
    special = tokenizer.convert_tokens_to_ids(SPECIAL)
    shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 256, **DECODER_FAMILIES[family]}
    shape = {k: v for k, v in shape.items() if v is not None}
    config = AutoConfig.for_model(family, vocab_size=len(tokenizer), bos_token_id=special, eos_token_id=special,
                                  pad_token_id=special, **shape)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def trained_run(sst2_slice, tmp_path_factory):
    """A finished 2-epoch run on the SST-2 slice (shared by the integration tests), and its summary."""
    out = tmp_path_factory.mktemp("runs") / "sst2"
    result = run_cli(*trained_run_command(sst2_slice, out)[3:])  # in this process: the run is what matters here
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def lora_runs(tmp_path_factory) -> list[Path]:
    """Three LoRA runs of the bundled model, each on its own 160 SST-2 sentences (validated on its own 48 dev
    sentences): the parents of merges and the adapters of a multi-adapter server."""
    shared(SST2)
    out = tmp_path_factory.mktemp("lora-runs")
    train, dev = read_tsv(SST2 / "train.tsv"), read_tsv(SST2 / "dev.tsv")
    runs = []
    for k in range(3):
        rows = write_tsv(out / f"train{k}.tsv", train[1000 + 160 * k:1000 + 160 * (k + 1)], ["sentence", "label"])
        held = write_tsv(out / f"dev{k}.tsv", dev[200 + 48 * k:200 + 48 * (k + 1)], ["sentence", "label"])
        run = out / f"lora{k}"
        result = run_cli("train", REPO / "examples" / "sst2.yaml", f"data.train={rows}", f"data.validation={held}",
                         "strategy.name=lora", "train.max_steps=20", "train.batch_size=16", "train.lr=2e-3",
                         "train.eval_every=20", f"train.seed={k}", f"output={run}")
        assert result.returncode == 0, result.stderr
        runs.append(run)
    return runs


STORIES260K = SHARED_DATA / "models" / "stories260K"
TINYSTORIES = SHARED_DATA / "corpus" / "tinystories_train_first2MiB.txt"


@pytest.fixture(scope="session")
def stories260k(tmp_path_factory) -> Path:
    """The real pretrained stories260K (llama2.c), imported as a run directory by `lmtune import`."""
    shared(STORIES260K)
    out = tmp_path_factory.mktemp("imported") / "stories260K"
    result = run_cli("import", "llama2c", STORIES260K, out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def stories_slice(tmp_path_factory) -> dict[str, Path]:
    """The first 60 TinyStories (train) and the next 12 (validation), as plain-text corpora."""
    shared(TINYSTORIES)
    from lmtune.data.corpus import DOCUMENT_SEPARATOR, split_documents

    stories = split_documents(TINYSTORIES.read_text(encoding="utf-8"))[0]
    out = tmp_path_factory.mktemp("stories")
    paths = {}
    for name, part in (("train", stories[:60]), ("validation", stories[60:72])):
        paths[name] = out / f"{name}.txt"
        paths[name].write_text("".join(f"{s}\n{DOCUMENT_SEPARATOR}\n" for s in part), encoding="utf-8")
    return paths


@pytest.fixture(scope="session")
def instructions(tmp_path_factory) -> Path:
    """An instruction-tuning JSONL made from real SST-2 rows: half Alpaca-style, half chat messages."""
    shared(SST2)
    out = tmp_path_factory.mktemp("sft") / "reviews.jsonl"
    lines = []
    for i, row in enumerate(read_tsv(SST2 / "train.tsv")[:120]):
        answer = "positive" if row["label"] == "1" else "negative"
        if i % 2:
            lines.append({"instruction": "Is this movie review positive or negative?", "input": row["sentence"],
                          "output": answer})
        else:
            lines.append({"messages": [{"role": "system", "content": "You rate movie reviews."},
                                       {"role": "user", "content": f"Review: {row['sentence']}"},
                                       {"role": "assistant", "content": answer}]})
    out.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return out


def untrained_run(run_dir: Path):
    """The run's starting point as a loaded run: its base model with the task's head as training initialised it
    (same seed), for checking that training learned something."""
    import torch

    from lmtune.inference import LoadedRun, restore_task
    from lmtune.models import load_tokenizer, resolve_model
    from lmtune.rundir import read_run

    path, cfg, state = read_run(run_dir)
    task = restore_task(cfg, state)
    torch.manual_seed(cfg.train.seed)
    source = resolve_model(cfg.model)
    return LoadedRun(path, cfg, task, task.build_model(source).eval(), load_tokenizer(source))


@pytest.fixture(scope="session")
def easy_qa(tmp_path_factory) -> dict[str, Path]:
    """Extractive QA whose answer always follows one pattern (who won): the bundled model learns it in a few
    steps, where a few steps of real SQuAD leave F1 at 0. 44 training and 12 evaluation questions."""
    import random

    rng = random.Random(0)
    names = ["Anna", "Boris", "Carla", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Irene", "Jonas", "Kira"]
    rows = []
    for _ in range(56):
        name, thing, city = rng.choice(names), rng.choice(["race", "prize", "cup", "title"]), rng.choice(
            ["Paris", "Oslo", "Rome", "Lima"])
        context = f"In {city}, {name} won the {thing} after a long day. The crowd cheered for {name}."
        rows.append({"question": f"Who won the {thing} in {city}?", "context": context,
                     "answers": {"text": [name], "answer_start": [context.index(name)]}})
    out = tmp_path_factory.mktemp("easy-qa")
    paths = {}
    for name, part in (("train", rows[:44]), ("eval", rows[44:])):
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in part))
    return paths


DIALOGSUM = SHARED_DATA / "summarization" / "dialogsum"


@pytest.fixture(scope="session")
def dialogsum(tmp_path_factory) -> dict[str, Path]:
    """32 training and 4 test dialogues of the real DialogSum, and a tiny BERT to warm-start a summarizer."""
    shared(DIALOGSUM)
    out = tmp_path_factory.mktemp("dialogsum")
    train = DIALOGSUM.joinpath("train.jsonl").read_text().splitlines()[:32]
    test = DIALOGSUM.joinpath("test.jsonl").read_text().splitlines()[:4]
    (out / "train.jsonl").write_text("\n".join(train) + "\n")
    (out / "test.jsonl").write_text("\n".join(test) + "\n")
    return {"train": out / "train.jsonl", "test": out / "test.jsonl", "model": make_tiny_bert(out / "bert", 2, 64)}


class Server(ServeProcess):
    """A real `lmtune serve` process on a free loopback port, run from the repository."""

    def __init__(self, runs: list[str], *options: str):
        super().__init__(runs, *options, cwd=REPO)

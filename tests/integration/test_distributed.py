"""The same job as 2 CPU processes under torchrun (gloo): one run directory, one writer, a clean exit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter

import pytest

from lmtune.serving.process import free_port
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_torchrun_two_cpu_processes(sst2_slice, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
        "-m", "lmtune", "train", str(REPO / "examples" / "sst2.yaml"), f"data.train={sst2_slice['train']}",
        f"data.validation={sst2_slice['dev']}", f"output={out}", "train.epochs=1", "train.batch_size=16",
        "train.eval_every=3", "train.log_every=1",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.strip().splitlines()) == 1  # the summary comes from rank 0 only
    summary = json.loads(result.stdout)
    assert summary["processes"] == 2
    assert summary["step"] == 7  # 240 rows / 16 = 15 batches → 7 per process (tail cut to stay in step)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    counts = Counter((x["split"], x["step"]) for x in lines)
    assert counts and max(counts.values()) == 1  # written by the main process only
    assert [x["step"] for x in lines if x["split"] == "validation"] == [3, 6, 7]
    # the learning rate follows the schedule of 7 optimizer steps, as in one process (not one step per process)
    import torch

    from lmtune.loader import load_config
    from lmtune.training.optim import build_scheduler

    cfg = load_config(REPO / "examples" / "sst2.yaml", ["train.epochs=1"]).train
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    scheduler = build_scheduler(optimizer, cfg, 7)
    expected = []
    for _ in range(7):
        optimizer.step()
        scheduler.step()
        expected.append(scheduler.get_last_lr()[0])
    logged = [x["lr"] for x in lines if x["split"] == "train"]
    assert logged == pytest.approx(expected) and logged[-2] > 0
    assert {p.name for p in (out / "checkpoints" / "step-7").iterdir()} >= {"random_states_0.pkl",
                                                                             "random_states_1.pkl"}
    assert (out / "model" / "model.safetensors").is_file()
    # every process evaluated its share; the gathered metrics cover the whole dev slice
    assert sum(map(sum, json.loads((out / "metrics.json").read_text())["validation"]["confusion_matrix"])) == 120


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "lmtune", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)


def _validation_losses(run) -> dict[int, float]:
    return {x["step"]: x["loss"] for x in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if x["split"] == "validation"}


@pytest.fixture(scope="module")
def fsdp_runs(instructions, tmp_path_factory):
    """SFT of a tiny GPT-2 (tied input and output embeddings) with full fine-tuning over 2 torchrun processes:
    sharded (FSDP2) and under DDP in fp32, sharded in bf16, and that run resumed from its step-3 checkpoint."""
    from tests.conftest import make_tiny_decoder

    root = tmp_path_factory.mktemp("fsdp")
    texts = [json.loads(line).get("input") or "" for line in instructions.read_text().splitlines()[:60]]
    model = make_tiny_decoder("gpt2", root / "base", [t for t in texts if t] or ["a b c"])
    config = root / "sft.yaml"
    config.write_text("task: sft\nstrategy: {name: full}\n")

    def train(out, *more):
        return _torchrun("train", str(config), f"model={model}", f"data.train={instructions}",
                         "data.max_train_samples=48", "train.max_steps=6", "train.eval_every=3", "train.batch_size=4",
                         "train.lr=1e-3", "train.max_length=96", "train.eval_train_samples=0", "train.log_every=1",
                         "train.keep_checkpoints=3", f"output={out}", *more)

    # fp32: the same arithmetic as DDP but for the order of sums; bf16: units gathered in bf16 (and resumed)
    runs = {"fsdp": train(root / "fsdp", "train.fsdp=true", "train.precision=fp32"),
            "ddp": train(root / "ddp", "train.precision=fp32"),
            "bf16": train(root / "bf16", "train.fsdp=true", "train.precision=bf16")}
    resumed = root / "resumed"  # a copy of the bf16 run as if it had been killed between steps 3 and 4
    shutil.copytree(root / "bf16", resumed)
    for path in (resumed / "checkpoints" / "step-4", resumed / "checkpoints" / "step-6", resumed / "model"):
        shutil.rmtree(path)
    (resumed / "metrics.json").unlink()
    runs["resumed"] = train(resumed, "train.fsdp=true", "train.precision=bf16")
    return root, model, runs


def _tensor_bytes_by_file(shards) -> dict[str, int]:
    """Bytes of tensors each process wrote to a sharded checkpoint (from its metadata)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = FileSystemReader(shards).read_metadata()
    found = Counter()
    for index, stored in metadata.storage_data.items():
        if isinstance(metadata.state_dict_metadata[index.fqn], TensorStorageMetadata):
            found[stored.relative_path] += stored.length
    return dict(found)


def test_fsdp_shards_full_fine_tuning_over_two_processes(fsdp_runs):
    root, _, runs = fsdp_runs
    for name, result in runs.items():
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
    summary = json.loads(runs["fsdp"].stdout)
    assert (summary["processes"], summary["step"], summary["strategy"]) == (2, 6, "full")
    checkpoint = root / "fsdp" / "checkpoints" / "step-6"
    assert not (checkpoint / "optimizer.bin").exists() and not (checkpoint / "model.safetensors").exists()
    tensors = _tensor_bytes_by_file(checkpoint / "shards")
    assert sorted(tensors) == ["__0_0.distcp", "__1_0.distcp"]
    for share in tensors.values():  # each process holds half the weights and optimizer state, not all of them
        assert 0.45 < share / sum(tensors.values()) < 0.55, tensors
    whole = root / "ddp" / "checkpoints" / "step-6"  # what one DDP process holds: the whole of both
    assert sum(tensors.values()) < 1.3 * ((whole / "model.safetensors").stat().st_size
                                          + (whole / "optimizer.bin").stat().st_size)
    # the same training as DDP, step by step (not bit for bit: the gradients are summed in another order; a DDP
    # whose processes stopped averaging gradients after an evaluation was 1e-2 away at step 4)
    fsdp, ddp = _validation_losses(root / "fsdp"), _validation_losses(root / "ddp")
    assert 3 in fsdp and 6 in fsdp and fsdp == {s: pytest.approx(x, abs=5e-5) for s, x in ddp.items()}
    assert fsdp[6] < fsdp[3]  # and it learns
    bf16 = _validation_losses(root / "bf16")  # gathered and computed in bf16: the same curve within bf16's rounding
    assert bf16 == {s: pytest.approx(x, abs=5e-3) for s, x in ddp.items()}


def test_fsdp_resumes_from_its_shards_and_saves_ordinary_weights(fsdp_runs):
    import torch
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from transformers import AutoModelForCausalLM

    root, base, runs = fsdp_runs
    assert runs["resumed"].returncode == 0, runs["resumed"].stderr[-3000:]
    assert "resumed from step-3 (epoch 0, batch 3)" in runs["resumed"].stderr
    resumed, uninterrupted = _validation_losses(root / "resumed"), _validation_losses(root / "bf16")
    assert resumed == {s: pytest.approx(x, abs=5e-5) for s, x in uninterrupted.items()}
    # the final model is the checkpoint's shards put together, as plain transformers weights
    dcp_to_torch_save(root / "bf16" / "checkpoints" / "step-6" / "shards", root / "whole.pt")
    gathered = torch.load(root / "whole.pt", weights_only=False)["model"]
    saved = load_file(root / "bf16" / "model" / "model.safetensors")
    assert set(saved) - {"lm_head.weight"} == set(gathered) - {"lm_head.weight"}  # tied: may be saved once
    assert all(torch.equal(saved[k], gathered[k]) for k in saved)
    model = AutoModelForCausalLM.from_pretrained(root / "bf16" / "model")
    start = AutoModelForCausalLM.from_pretrained(base)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert not torch.equal(model.transformer.wte.weight, start.transformer.wte.weight)  # trained, not the start


def test_fsdp_on_one_process_or_with_an_adapter_is_refused_in_one_line(tmp_path, cli):
    config = REPO / "examples" / "sst2.yaml"
    one = cli("train", config, "train.fsdp=true", f"output={tmp_path / 'one'}", "data.max_train_samples=16")
    assert one.returncode == 2 and one.stderr.strip().splitlines()[-1] == (
        "lmtune: error: train.fsdp: shards over 2 or more processes and this run has 1; start it with torchrun "
        "--nproc_per_node N -m lmtune train ..., or set train.fsdp=false")
    lora = cli("train", config, "train.fsdp=true", "strategy.name=lora", f"output={tmp_path / 'lora'}")
    assert lora.returncode == 2 and "train.fsdp: shards full fine-tuning (strategy full or llrd); strategy 'lora' " \
        "trains few weights, which sharding saves nothing on: set train.fsdp=false" in lora.stderr
    assert not (tmp_path / "lora").exists()

import json
import shutil
from pathlib import Path

import pytest
import torch

from lmtune.config import TrainConfig
from lmtune.data import Table
from lmtune.data.tokenize import tokenize_table
from lmtune.training.checkpoint import STATE_FILE, _rotate, latest_checkpoint
from lmtune.training.optim import build_optimizer, build_scheduler


class _Counting:
    name_or_path = "counting"

    def __init__(self):
        self.calls = 0

    def __len__(self):
        return 100

    def __call__(self, texts, pairs=None, truncation=True, max_length=8):
        self.calls += 1
        return {"input_ids": [[1] * min(len(t), max_length) for t in texts]}


def test_tokenization_is_cached_and_keyed_on_settings(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("text\nabc\nabcdef\n")
    table = Table(str(data), ["text"], [{"text": "abc"}, {"text": "abcdef"}], [2, 3])
    tok = _Counting()
    first = tokenize_table(table, tok, "text", None, 8)
    assert tokenize_table(table, tok, "text", None, 8) == first and tok.calls == 1
    assert tokenize_table(table, tok, "text", None, 4)["input_ids"] == [[1, 1, 1], [1, 1, 1, 1]]
    assert tok.calls == 2
    data.write_text("text\nabc\nabcdefg\n")  # the file changed: re-tokenize
    tokenize_table(table, tok, "text", None, 8)
    assert tok.calls == 3


def test_no_weight_decay_on_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = build_optimizer(model, 1e-3, weight_decay=0.1)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight)}


def test_warmup_then_linear_decay_to_zero():
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(lr=1.0, warmup=0.2)
    optimizer = build_optimizer(model, cfg.lr)
    scheduler = build_scheduler(optimizer, cfg, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False))
    assert scheduler.get_last_lr()[0] == 0.0


def test_resume_point_ignores_partial_writes_skips_damage_and_rotation_keeps_best(tmp_path):
    from lmtune.integrity import write_manifest
    from lmtune.training.checkpoint import remove_partial, resume_point

    root = tmp_path / "checkpoints"
    for step in (10, 20, 30, 40):
        (root / f"step-{step}").mkdir(parents=True)
        (root / f"step-{step}" / STATE_FILE).write_text(json.dumps({"step": step}))
        write_manifest(root / f"step-{step}")
    (root / ".tmp-step-50").mkdir()  # killed mid-write
    (root / "step-60").mkdir()  # published, then its files were lost
    warnings = []
    assert resume_point(tmp_path, warnings.append).name == "step-40"
    assert warnings == [f"checkpoint step-60 is damaged ({root / 'step-60' / STATE_FILE}: missing from the "
                        "checkpoint); skipping it"]
    remove_partial(tmp_path)
    assert not (root / ".tmp-step-50").exists()
    shutil.rmtree(root / "step-60")
    assert latest_checkpoint(tmp_path).name == "step-40"
    _rotate(tmp_path, keep=2, best_step=10)
    assert sorted(p.name for p in root.glob("step-*") if (p / STATE_FILE).exists()) == ["step-10", "step-30", "step-40"]


def test_gradient_clipping_bounds_the_update():
    from accelerate import Accelerator

    from lmtune.training.loop import _optimizer_step

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 4)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)
    _optimizer_step(accelerator, model, optimizer, scheduler, max_grad_norm=0.5, copies=None)
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True)))
    assert moved.item() == pytest.approx(0.5, rel=1e-4)  # SGD with lr 1 moves by exactly the clipped norm


def test_a_random_state_that_was_not_restored_stops_the_resume(tmp_path):
    """accelerate only logs when it cannot restore the random state; lmtune checks it and says so."""
    from types import SimpleNamespace

    import pytest
    import torch

    from lmtune.errors import LmtuneError
    from lmtune.training.checkpoint import _check_random_state

    accelerator = SimpleNamespace(process_index=0)
    torch.save({"torch_manual_seed": torch.get_rng_state()}, tmp_path / "random_states_0.pkl")
    _check_random_state(accelerator, tmp_path)  # restored: nothing to say
    torch.rand(3)  # the state moved on, as if the restore had not happened
    with pytest.raises(LmtuneError, match="random_states_0.pkl: the random state was not restored"):
        _check_random_state(accelerator, tmp_path)
    (tmp_path / "random_states_0.pkl").write_bytes(b"not a pickle")
    with pytest.raises(LmtuneError, match="cannot read the saved random state"):
        _check_random_state(accelerator, tmp_path)


def test_a_run_whose_weights_alone_do_not_fit_is_pointed_to_an_adapter_not_to_a_smaller_batch():
    """Full tuning of a 1.24B decoder on this machine: gradients, optimizer state and a checkpoint's copies
    exceed the memory at any batch, so the refusal names LoRA (then QLoRA), not a batch size or checkpointing."""
    from types import SimpleNamespace

    from lmtune.errors import LmtuneError
    from lmtune.training.memory import GIB, MemoryEstimate, check_fits

    found = MemoryEstimate(process=5 * GIB, weights=int(4.6 * GIB), gradients=int(4.6 * GIB),
                           optimizer=int(9.2 * GIB), copies=int(2.3 * GIB), activations=5 * GIB,
                           checkpoint=int(13.8 * GIB), evaluation=GIB, per_sample=int(2.5 * GIB), available=26 * GIB)
    for strategy, fix in (("full", "strategy.name=lora"), ("lora", "strategy.name=qlora")):
        cfg = SimpleNamespace(train=SimpleNamespace(gradient_checkpointing=False, max_length=1024),
                              strategy=SimpleNamespace(name=strategy))
        with pytest.raises(LmtuneError, match=f"; try {fix}$"):
            check_fits(found, cfg)
    # several processes training every weight: sharding them comes first
    with pytest.raises(LmtuneError, match="; try train.fsdp=true$"):
        check_fits(found, cfg=SimpleNamespace(train=SimpleNamespace(gradient_checkpointing=False, max_length=1024),
                                              strategy=SimpleNamespace(name="full")), can_shard=True)
    roomy = MemoryEstimate(process=GIB, weights=GIB, gradients=GIB, optimizer=2 * GIB, copies=0,
                           activations=40 * GIB, checkpoint=3 * GIB, evaluation=GIB, per_sample=5 * GIB,
                           available=26 * GIB)
    cfg = SimpleNamespace(train=SimpleNamespace(gradient_checkpointing=False, max_length=1024),
                          strategy=SimpleNamespace(name="full"))
    with pytest.raises(LmtuneError, match="; try train.batch_size=4$"):  # (0.95 x 26 - 4) // 5
        check_fits(roomy, cfg)


def test_measuring_the_machine_leaves_the_run_s_random_numbers_alone():
    """The step-time estimate times matrix products of random values: drawn from its own generator, so a run's
    dropout masks and shuffles are its seed's whether or not this process measured before (a resumed run in
    another process must draw the same numbers as the uninterrupted one)."""
    import torch

    from lmtune.training import step_time

    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    step_time._measured_rate.cache_clear()
    step_time._measured_rate(64, False, budget=0.01)
    assert torch.equal(torch.rand(4), expected)


class _FullDiskAccelerator:
    """save_state as safetensors fails when the disk fills while it writes the model."""

    is_main_process = True

    def wait_for_everyone(self):
        pass

    def save_state(self, directory):
        from safetensors import SafetensorError

        (Path(directory) / "model.safetensors").write_bytes(b"half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def test_a_full_disk_inside_safetensors_is_the_checkpoint_s_one_line_error(tmp_path):
    from lmtune.errors import LmtuneError
    from lmtune.training.checkpoint import TrainState, save_checkpoint

    with pytest.raises(LmtuneError) as err:
        save_checkpoint(_FullDiskAccelerator(), TrainState(step=6), tmp_path, 3, [])
    assert str(err.value) == (f"{tmp_path}/checkpoints/.tmp-step-6: cannot write checkpoint step-6 (No space left "
                              "on device); fix that and run the same command again: the run starts again")
    assert list((tmp_path / "checkpoints").iterdir()) == []  # the half-written checkpoint is gone


def test_a_full_disk_inside_safetensors_while_saving_the_model_is_an_os_error(tmp_path):
    from safetensors import SafetensorError

    from lmtune.rundir import save_model_atomic

    def save(out):
        (out / "model.safetensors").write_bytes(b"half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(OSError) as err:
        save_model_atomic(tmp_path, save)
    assert err.value.errno == 28 and err.value.strerror == "No space left on device"
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left


def test_other_safetensors_errors_pass_through(tmp_path):
    from safetensors import SafetensorError

    from lmtune.rundir import safetensors_os_errors

    with pytest.raises(SafetensorError, match="header too large"), safetensors_os_errors(tmp_path):
        raise SafetensorError("Error while deserializing header: header too large")

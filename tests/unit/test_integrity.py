"""The file checks: every kind of damage to every kind of file is one line naming the file and the damage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lmtune.integrity import (
    FileCheckError,
    check_checkpoint,
    check_model_dir,
    check_weights_file,
    read_json_object,
    read_yaml,
    write_manifest,
)
from lmtune.rundir import read_log


def _model_dir(path: Path, adapter: bool = False) -> Path:
    path.mkdir()
    if adapter:
        (path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "x", "r": 8}))
        save_file({"lora_A": torch.ones(8, 4)}, path / "adapter_model.safetensors")
    else:
        (path / "config.json").write_text(json.dumps({"model_type": "bert"}))
        save_file({"w": torch.ones(64, 64), "b": torch.zeros(64)}, path / "model.safetensors")
    (path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {}}}))
    (path / "tokenizer_config.json").write_text("{}")
    return path


def _message(call, *args) -> str:
    with pytest.raises(FileCheckError) as caught:
        call(*args)
    text = str(caught.value)
    assert "\n" not in text
    return text


def test_a_whole_model_directory_passes(tmp_path):
    check_model_dir(_model_dir(tmp_path / "m"))
    check_model_dir(_model_dir(tmp_path / "a", adapter=True))


@pytest.mark.parametrize("adapter", [False, True])
def test_truncated_weights(tmp_path, adapter):
    model = _model_dir(tmp_path / "m", adapter)
    weights = model / ("adapter_model.safetensors" if adapter else "model.safetensors")
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    assert _message(check_model_dir, model) == (
        f"{weights}: truncated: {len(data) - 100} bytes of the {len(data)} its header describes")
    weights.write_bytes(data[:5])
    assert _message(check_model_dir, model) == f"{weights}: truncated (5 bytes); expected a safetensors file"


def test_random_bytes_are_not_weights(tmp_path):
    model = _model_dir(tmp_path / "m")
    (model / "model.safetensors").write_bytes(os.urandom(4096))
    assert "not a safetensors file" in _message(check_model_dir, model)
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(os.urandom(4096))
    assert _message(check_model_dir, model) == (
        f"{model / 'pytorch_model.bin'}: not a complete torch file (4096 bytes; truncated or overwritten)")


def test_missing_pieces(tmp_path):
    model = _model_dir(tmp_path / "m")
    (model / "tokenizer.json").unlink()
    assert _message(check_model_dir, model).startswith(f"{model}: no tokenizer files (expected one of tokenizer.json")
    model = _model_dir(tmp_path / "n")
    (model / "model.safetensors").unlink()
    assert _message(check_model_dir, model, "run's model") == (
        f"{model}: no weights (model.safetensors or pytorch_model.bin); the run's model is incomplete")
    (model / "config.json").write_text('{"model_type": ')
    assert _message(check_model_dir, model) == (
        f"{model / 'config.json'}: not valid JSON (line 1, column 16: Expecting value); the file is damaged or "
        "truncated")


def test_torch_archives_are_checked_whole(tmp_path):
    path = tmp_path / "optimizer.bin"
    torch.save({"state": torch.ones(1000)}, path)
    check_weights_file(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "not a complete torch file" in _message(check_weights_file, path)


def test_checkpoint_manifest_catches_missing_short_and_changed_files(tmp_path):
    ckpt = tmp_path / "step-3"
    ckpt.mkdir()
    save_file({"w": torch.ones(16)}, ckpt / "model.safetensors")
    torch.save({"x": 1}, ckpt / "optimizer.bin")
    (ckpt / "trainer_state.json").write_text('{"step": 3}')
    write_manifest(ckpt)
    check_checkpoint(ckpt)
    state = (ckpt / "trainer_state.json")
    state.write_text('{"step": 4}')  # same size, other content
    assert _message(check_checkpoint, ckpt) == (
        f"{state}: its content changed since the checkpoint was written (checksum)")
    state.write_text('{"step": 3}')
    (ckpt / "optimizer.bin").unlink()
    assert _message(check_checkpoint, ckpt) == f"{ckpt / 'optimizer.bin'}: missing from the checkpoint"


def test_checkpoints_without_a_manifest_are_checked_by_format(tmp_path):
    ckpt = tmp_path / "step-1"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text('{"step": 1}')
    assert _message(check_checkpoint, ckpt, ["trainer_state.json", "optimizer.bin"]) == (
        f"{ckpt / 'optimizer.bin'}: missing from the checkpoint")


def test_json_and_yaml_files(tmp_path):
    path = tmp_path / "task.json"
    path.write_bytes(b"")
    assert _message(read_json_object, path, "a task state") == f"{path}: empty file; expected a task state"
    path.write_text("[1, 2]")
    assert _message(read_json_object, path, "a task state") == (
        f"{path}: expected a task state (a JSON object), found list")
    path.write_text('{"labels": []}')
    assert _message(read_json_object, path, "a task state", ["task"]) == (
        f"{path}: a task state lacks 'task'; the file is damaged")
    path.write_bytes(b'{"task": "\xff"}')
    assert "not text (invalid UTF-8 byte at offset 10)" in _message(read_json_object, path, "x")
    config = tmp_path / "config.yaml"
    config.write_text("task: classification\ndata: {train: [\n")
    assert _message(read_yaml, config, "the config").startswith(f"{config}: not valid YAML at line 3")


def test_metrics_log_torn_last_line_is_skipped_and_a_damaged_line_named(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')  # a writer is in the middle of line 3
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2]
    log.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    assert _message(read_log, tmp_path) == f"{log}:2: not a JSON object; the log is damaged"


def test_a_published_folder_has_the_modes_of_any_new_file_not_safetensors_owner_only(tmp_path):
    """safetensors writes its files 0600 and mkdtemp makes 0700 folders: a staged folder (an export, a merge) is
    published with the modes the umask gives any new file, so whoever can read the run can read its weights."""
    from lmtune.integrity import staged_folder

    mask = os.umask(0o022)
    try:
        target = tmp_path / "export"
        with staged_folder(target) as tmp:
            (tmp / "inner").mkdir(mode=0o700)
            save_file({"w": torch.zeros(2)}, str(tmp / "inner" / "model.safetensors"))
            assert (tmp / "inner" / "model.safetensors").stat().st_mode & 0o777 == 0o600  # what the library does
            (tmp / "config.json").write_text("{}")
        modes = {p.relative_to(target).as_posix(): p.stat().st_mode & 0o777 for p in target.rglob("*")}
        assert modes == {"inner": 0o755, "inner/model.safetensors": 0o644, "config.json": 0o644}
        assert target.stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(mask)

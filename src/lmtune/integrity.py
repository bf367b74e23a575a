"""Checks of the files lmtune loads, where it loads them: a missing, truncated or wrong-kind file is one
line naming the file and what is wrong (`FileCheckError`, exit 2), never a traceback from deep inside
safetensors, torch or tokenizers.

The checks are cheap: they read headers and directories, never a whole weight file. Checkpoints also
carry a manifest (size and CRC-32 of every file, written last), which catches a file that is missing,
cut short or overwritten in place.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lmtune.errors import LmtuneError

MANIFEST = "manifest.json"
"""Checkpoint manifest: {"files": {name: {"bytes": n, "crc32": c}}}; written after every other file."""

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")
"""A model directory has a tokenizer when it holds at least one of these."""

_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024


class FileCheckError(LmtuneError):
    """A file lmtune needs is missing, truncated or not what it should be."""

    def __init__(self, path: Path | str, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


@contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A fresh sibling of ``target`` to write into; it replaces ``target`` only when the block ends without an
    error, so a failed or killed export leaves the previous folder (or none), never a half-written one."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        usual_modes(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def usual_modes(root: Path) -> None:
    """Give a folder about to be published, and everything in it, the modes any new file or folder gets (``0o666``
    or ``0o777`` less the umask). safetensors 0.8 writes its files owner-only (0600) and ``mkdtemp`` makes private
    folders, so a model or checkpoint in a shared folder was the one part of a run that the rest of a team (or a
    `compare` worker under another account) could not read."""
    mask = _umask()
    for path in [root, *root.rglob("*")]:
        mode = (0o777 if path.is_dir() else 0o666) & ~mask
        try:
            if not path.is_symlink() and path.stat().st_mode & 0o777 != mode:
                path.chmod(mode)
        except OSError:  # a filesystem without Unix modes (FAT, some network mounts): they are a courtesy there
            pass


def _umask() -> int:
    try:  # read, not set: setting it to learn it would change it for the process's other threads for a moment
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("Umask:"))
        return int(line.split()[1], 8)
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def read_json(path: Path, what: str = "JSON") -> Any:
    """The parsed JSON file, or a `FileCheckError` saying it is missing, empty or invalid."""
    text = _read_text(path)
    if not text.strip():
        raise FileCheckError(path, f"empty file; expected {what}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise FileCheckError(path, f"not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                                   f"the file is damaged or truncated") from None


def read_json_object(path: Path, what: str, required: Iterable[str] = ()) -> dict[str, Any]:
    """A JSON file that must hold an object with the ``required`` keys."""
    value = read_json(path, what)
    if not isinstance(value, dict):
        raise FileCheckError(path, f"expected {what} (a JSON object), found {type(value).__name__}")
    missing = [key for key in required if key not in value]
    if missing:
        raise FileCheckError(path, f"{what} lacks {', '.join(map(repr, missing))}; the file is damaged")
    return value


def read_yaml(path: Path, what: str = "YAML") -> Any:
    import yaml

    text = _read_text(path)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise FileCheckError(path, f"not valid YAML{where}; expected {what}; the file is damaged") from None
    if not isinstance(value, dict):
        raise FileCheckError(path, f"expected {what} (a mapping), found {type(value).__name__}")
    return value


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise FileCheckError(path, "missing" if not path.exists() else "not a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise FileCheckError(path, f"not text (invalid UTF-8 byte at offset {err.start}); the file is damaged") \
            from None
    except OSError as err:
        raise FileCheckError(path, f"unreadable ({err.strerror or err})") from None


# ---- weights ------------------------------------------------------------------------------------------


def check_weights_file(path: Path) -> None:
    """A safetensors file or a torch zip archive (``.bin``, ``.pt``, ``.pkl`` written by ``torch.save``) that
    is complete: its header parses and its size matches what the header promises."""
    if not path.is_file():
        raise FileCheckError(path, "missing" if not path.exists() else "not a file")
    if path.suffix == ".safetensors":
        _check_safetensors(path)
    else:
        _check_torch_archive(path)


def _check_safetensors(path: Path) -> None:
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise FileCheckError(path, f"truncated ({size} bytes); expected a safetensors file")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, _SAFETENSORS_MAX_HEADER):
            raise FileCheckError(path, "not a safetensors file, or truncated (its header length is impossible)")
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise FileCheckError(path, "not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise FileCheckError(path, "not a safetensors file (its header is not a table of tensors)")
    ends = [t["data_offsets"][1] for k, t in header.items()
            if k != "__metadata__" and isinstance(t, dict) and isinstance(t.get("data_offsets"), list)]
    expected = 8 + header_len + max(ends, default=0)
    if size < expected:
        raise FileCheckError(path, f"truncated: {size} bytes of the {expected} its header describes")


def _check_torch_archive(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        size = path.stat().st_size
        raise FileCheckError(path, f"not a complete torch file ({size} bytes; truncated or overwritten)") from None
    if not any(name.endswith("data.pkl") for name in names):
        raise FileCheckError(path, "not a torch file (a zip archive without data.pkl)")


def weight_files(directory: Path) -> list[Path]:
    """The model weights of a transformers or PEFT directory (every shard of a sharded checkpoint)."""
    found = sorted(p for pattern in ("*.safetensors", "pytorch_model*.bin", "adapter_model.bin")
                   for p in directory.glob(pattern))
    for index in directory.glob("*.index.json"):
        shards = read_json_object(index, "a weight index", ["weight_map"])["weight_map"]
        for name in sorted(set(shards.values()) if isinstance(shards, dict) else ()):
            if not (directory / name).exists():
                raise FileCheckError(directory / name, f"missing (listed in {index.name})")
    return found


# ---- directories ----------------------------------------------------------------------------------------


def check_model_dir(directory: Path, what: str = "model", tokenizer: bool = True,
                    needs_weights: bool = True) -> None:
    """A transformers model directory (or a PEFT adapter directory) that can be loaded.

    Args:
        directory: the folder.
        what: how the error names it (``model``, ``RUN/model``).
        tokenizer: also require tokenizer files.
        needs_weights: a directory holding only a config is damaged (False for a scratch model's base).
    """
    if not directory.is_dir():
        raise FileCheckError(directory, f"missing; expected the {what} directory")
    adapter = directory / "adapter_config.json"
    if adapter.is_file():
        read_json_object(adapter, "a PEFT adapter config", ["base_model_name_or_path"])
    else:
        read_json_object(directory / "config.json", "a model config")
    weights = weight_files(directory)
    if needs_weights and not weights:
        kind = "adapter_model.safetensors" if adapter.is_file() else "model.safetensors or pytorch_model.bin"
        raise FileCheckError(directory, f"no weights ({kind}); the {what} is incomplete")
    for path in weights:
        check_weights_file(path)
    if tokenizer:
        check_tokenizer_dir(directory, what)


def check_tokenizer_dir(directory: Path, what: str = "model") -> None:
    """Tokenizer files that parse: tokenizer.json / tokenizer_config.json are JSON, a vocabulary is not empty."""
    present = [directory / name for name in TOKENIZER_FILES if (directory / name).is_file()]
    if not present:
        raise FileCheckError(directory, f"no tokenizer files (expected one of {', '.join(TOKENIZER_FILES[:4])}); "
                                        f"the {what} is incomplete")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (directory / name).exists():
            read_json(directory / name, "a tokenizer config")
    for path in present:
        if path.suffix == ".json":
            read_json_object(path, "a tokenizer")
        elif path.stat().st_size == 0:
            raise FileCheckError(path, "empty file; expected a tokenizer vocabulary")


# ---- checkpoints ---------------------------------------------------------------------------------------


def write_manifest(directory: Path) -> None:
    """Record the size and CRC-32 of every file of ``directory`` (a checkpoint being written)."""
    files = {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "crc32": _crc32(p)}
             for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (directory / MANIFEST).write_text(json.dumps({"files": files}, indent=1), encoding="utf-8")


def check_checkpoint(directory: Path, required: Iterable[str] = ()) -> None:
    """A complete, undamaged checkpoint: every file of its manifest present with its size and checksum
    (older checkpoints without a manifest: the ``required`` files present and every weight file whole)."""
    manifest = directory / MANIFEST
    if manifest.is_file():
        files = read_json_object(manifest, "a checkpoint manifest", ["files"])["files"]
        for name, expected in files.items():
            path = directory / name
            if not path.is_file():
                raise FileCheckError(path, "missing from the checkpoint")
            if path.stat().st_size != expected["bytes"]:
                raise FileCheckError(path, f"{path.stat().st_size} bytes, the checkpoint wrote {expected['bytes']}")
            if _crc32(path) != expected["crc32"]:
                raise FileCheckError(path, "its content changed since the checkpoint was written (checksum)")
        return
    for name in required:
        if not (directory / name).is_file():
            raise FileCheckError(directory / name, "missing from the checkpoint")
    for path in sorted(directory.iterdir()):
        if path.suffix in (".safetensors", ".bin", ".pkl", ".pt"):
            check_weights_file(path)
        elif path.suffix == ".json":
            read_json(path)


def _crc32(path: Path) -> int:
    value = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            value = zlib.crc32(chunk, value)
    return value

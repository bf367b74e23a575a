"""`lmtune export RUN`: the run's model as a plain transformers directory (LoRA adapters merged on request)."""

from __future__ import annotations

from pathlib import Path

from lmtune import rundir
from lmtune.errors import LmtuneError
from lmtune.inference import load, plain_model
from lmtune.integrity import staged_folder
from lmtune.strategies.lora import is_adapter_dir


def export(run_dir: str | Path, out_dir: str | Path | None = None, merge: bool = False) -> Path:
    """Write the run's model as a plain transformers directory (LoRA adapters merged when ``merge``).

    Returns:
        The directory written (default ``RUN/merged``).
    """
    run = load(run_dir)
    target = Path(out_dir) if out_dir else run.run_dir / "merged"
    model = run.model
    if is_adapter_dir(run.run_dir / rundir.MODEL):
        if not merge:
            raise LmtuneError(f"{run.run_dir}: the model is a LoRA adapter; pass --merge to fold it into the weights")
        model = plain_model(run)
    if target.exists() and any(target.iterdir()):
        raise LmtuneError(f"--out: {target} is not empty")
    with staged_folder(target) as tmp:
        model.save_pretrained(tmp)
        run.tokenizer.save_pretrained(tmp)
    return target

"""`lmtune explain RUN`: explain inputs with a run's model and write PNGs, explain.html and explain.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmtune.explanation.core import Explainer, Explanation


def explain_run(run_dir: str | Path, texts: list[str] | list[tuple[str, str]], out_dir: str | Path | None = None,
                methods: tuple[str, ...] = ("ig", "gradxinput", "occlusion"), target: str | None = None,
                steps: int = 50, checks: bool = True, compare_base: bool = True,
                pictures: bool = True, write: bool = True) -> list[Explanation]:
    """Explain each text (or (text, pair)) and write the outputs to ``out_dir`` (default RUN/explain).

    Writes ``explain.json`` (raw scores), ``explain.html`` (interactive, self-contained) and, with
    ``pictures``, three PNGs per input (``ex-NNN-attention-heads.png``, ``-attention-layers.png``,
    ``-attributions.png``); with ``write=False`` nothing is written.
    """
    from lmtune.errors import LmtuneError
    from lmtune.explanation.render import write_html, write_pngs
    from lmtune.inference import load
    from lmtune.rundir import write_text_atomic

    if not texts:
        raise LmtuneError("explain: no input; pass --text TEXT or --input FILE")
    run = load(run_dir)
    out = Path(out_dir) if out_dir else run.run_dir / "explain"
    if write:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise LmtuneError(f"--out: cannot create {out} ({err.strerror or err})") from None
    explainer = Explainer(run, methods, steps=steps, checks=checks, compare_base=compare_base)
    results = []
    for n, item in enumerate(texts, start=1):
        text, pair = item if isinstance(item, tuple) else (item, None)
        for k, explanation in enumerate(explainer.explain_all(text, pair, target)):
            results.append(explanation)
            if write and pictures:
                write_pngs(explanation, out, f"ex-{n:03d}" + (f"-{k + 1}" if k else ""))
    if write:
        write_text_atomic(out / "explain.json", json.dumps([e.to_dict() for e in results]))
        write_html(results, out / "explain.html", f"lmtune explain: {run.run_dir.name}")
    return results


def summary(results: list[Explanation]) -> dict[str, Any]:
    """Deletion and randomization results over all inputs, per method."""
    out: dict[str, Any] = {}
    for method in results[0].attributions if results else []:
        deletions = [e.deletion[method] for e in results if method in e.deletion]
        randomization = [e.randomization[method] for e in results if method in e.randomization]
        out[method] = {
            "inputs": len(results),
            "deletion_area_attribution": _mean([d["area_attribution"] for d in deletions]),
            "deletion_area_random": _mean([d["area_random"] for d in deletions]),
            "beats_random": sum(d["beats_random"] for d in deletions),
            "randomization_rank_correlation": _mean(randomization),
        }
    return out


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None

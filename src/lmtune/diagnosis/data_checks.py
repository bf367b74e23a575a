"""Problems in the data itself: leaks and contradictions between splits, imbalance, likely label noise."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from lmtune.config import RunConfig
from lmtune.data import Table
from lmtune.diagnosis.findings import Finding, Suggestion
from lmtune.integrity import read_json_object

IMBALANCE_RATIO = 4.0
"""The most frequent class this many times the least frequent one is an imbalance worth naming."""
NOISE_LOSS = 1.0
"""A training example whose loss stays above this (p(label) < 0.37) in every later evaluation is suspect."""
NOISE_MAX_SHARE = 0.2
"""More suspects than this share of the sample means the model is not learning, not label noise."""
SEVERE_SHARE = 0.01
"""Leaks, contradictions or suspected noise in at least 1% of the rows make the state "data problem"."""


def data_findings(run_dir: Path, cfg: RunConfig, tables: dict[str, Table]) -> list[Finding]:
    """Every data problem found in the run's splits (as the run saw them) and its training-sample losses."""
    text, label = cfg.data.text, cfg.data.label
    train = tables["train"]
    if label not in train.columns:
        return []
    findings = []
    validation = tables.get("validation")
    if validation is not None and label in validation.columns:
        findings += _leaks(train, validation, text, label)
    findings += _contradictions(train, text, label)
    imbalance = _imbalance(train, label)
    if imbalance:
        findings.append(imbalance)
    noise = _label_noise(run_dir, train, text, label)
    if noise:
        findings.append(noise)
    return findings


def _key(value: Any) -> str:
    return " ".join(str(value).lower().split())


def _leaks(train: Table, validation: Table, text: str, label: str) -> list[Finding]:
    seen: dict[str, set[str]] = defaultdict(set)
    for row in train.rows:
        seen[_key(row.get(text))].add(str(row.get(label)))
    same, different = [], []
    for i, row in enumerate(validation.rows):
        labels = seen.get(_key(row.get(text)))
        if labels is None:
            continue
        example = {"where": validation.where(i), "text": str(row.get(text)), "label": row.get(label)}
        if labels == {str(row.get(label))}:
            same.append(example)
        else:
            different.append({**example, "train_labels": ", ".join(sorted(labels))})
    findings = []
    n = len(validation)
    if same:
        findings.append(Finding(
            "data", f"{len(same)} of {n} validation examples also in the training data (duplicates)",
            [f"{len(same) / n:.1%} of validation is not held out: validation metrics are optimistic"],
            [Suggestion("remove the duplicates from one split, then retrain")], same[:10],
            severe=len(same) >= SEVERE_SHARE * n,
        ))
    if different:
        findings.append(Finding(
            "data", f"{_count(len(different), 'validation example')} also in training with a different label",
            ["the same text with two labels: at most one is right, so the metric has a ceiling below 1"],
            [Suggestion("check these labels; fix or drop the contradictions")], different[:10],
            severe=len(different) >= SEVERE_SHARE * n,
        ))
    return findings


def _contradictions(train: Table, text: str, label: str) -> list[Finding]:
    labels: dict[str, Counter] = defaultdict(Counter)
    first: dict[str, int] = {}
    for i, row in enumerate(train.rows):
        key = _key(row.get(text))
        labels[key][str(row.get(label))] += 1
        first.setdefault(key, i)
    clashes = [key for key, counts in labels.items() if len(counts) > 1]
    if not clashes:
        return []
    examples = [{"where": train.where(first[k]), "text": str(train.rows[first[k]].get(text)),
                 "labels": ", ".join(f"{lab} x{c}" for lab, c in sorted(labels[k].items()))} for k in clashes[:10]]
    return [Finding(
        "data", f"{_count(len(clashes), 'training text')} with contradictory labels",
        [f"{sum(sum(labels[k].values()) for k in clashes)} training rows carry a text that also has another label"],
        [Suggestion("check these labels; fix or drop the contradictions")], examples,
        severe=len(clashes) >= SEVERE_SHARE * len(train),
    )]


def _imbalance(train: Table, label: str) -> Finding | None:
    counts = Counter(str(row.get(label)) for row in train.rows)
    if len(counts) < 2:
        return None
    (top, most), (bottom, least) = counts.most_common()[0], counts.most_common()[-1]
    if most < IMBALANCE_RATIO * least:
        return None
    share = ", ".join(f"{lab}: {c} ({c / len(train):.1%})" for lab, c in counts.most_common())
    return Finding(
        "data", f"label imbalance: {top!r} has {most / least:.1f}x the examples of {bottom!r}",
        [f"training labels: {share}", "accuracy rewards predicting the frequent class; macro-F1 does not"],
        [Suggestion("select and stop on macro-F1", ["early_stopping.metric=macro_f1"]),
         Suggestion(f"collect more examples of {bottom!r}")],
    )


def _label_noise(run_dir: Path, train: Table, text: str, label: str) -> Finding | None:
    """Training examples the model keeps getting wrong in the later half of training."""
    from lmtune.rundir import EXAMPLE_LOSSES_LOG, read_log

    losses = [line["losses"] for line in read_log(run_dir, EXAMPLE_LOSSES_LOG)]
    sample_file = run_dir / "train_sample.json"
    if len(losses) < 2 or not sample_file.is_file():
        return None
    indices = read_json_object(sample_file, "the training sample's indices", ["indices"])["indices"]
    later = losses[len(losses) // 2:]
    if any(len(row) != len(indices) for row in later):
        return None
    suspects = [k for k in range(len(indices)) if min(row[k] for row in later) > NOISE_LOSS]
    if not suspects or len(suspects) > NOISE_MAX_SHARE * len(indices):
        return None
    mean = {k: sum(row[k] for row in later) / len(later) for k in suspects}
    suspects.sort(key=lambda k: -mean[k])
    examples = [{"where": train.where(indices[k]), "text": str(train.rows[indices[k]].get(text)),
                 "label": train.rows[indices[k]].get(label), "mean_loss": round(mean[k], 3)} for k in suspects[:10]]
    return Finding(
        "data", f"{_count(len(suspects), 'training example')} keep{'s' if len(suspects) == 1 else ''} a high loss: "
        "possible label noise",
        [f"loss above {NOISE_LOSS} in each of the last {len(later)} evaluations, out of {len(indices)} training "
         "examples scored; the model is confident that their label is wrong"],
        [Suggestion("review these labels"),
         Suggestion("soften the targets while they are reviewed", ["regularization.label_smoothing=0.1"])],
        examples, severe=len(suspects) >= SEVERE_SHARE * len(indices),
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"

"""What a diagnosis says: a state, the evidence behind it, and next steps a user can paste."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

STATES = ("healthy", "overfitting", "underfitting", "diverging", "data problem", "forgetting", "unknown")


@dataclass
class Suggestion:
    why: str
    """The next step in words, tied to the evidence."""
    overrides: list[str] = field(default_factory=list)
    """``key=value`` overrides that do it: ``lmtune train run.yaml KEY=VALUE ...``."""


@dataclass
class Finding:
    kind: str
    """One of STATES (a training-dynamics finding; forgetting: a benchmark got worse with tuning) or ``data`` (a
    problem in the data itself)."""
    title: str
    evidence: list[str] = field(default_factory=list)
    suggestions: list[Suggestion] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    """Rows that show the problem (duplicates, contradictions, possible label noise)."""
    severe: bool = True
    """A data finding large enough to name the run's state "data problem" (a few odd rows are not)."""


@dataclass
class Diagnosis:
    state: str
    """healthy | overfitting | underfitting | diverging | data problem | forgetting | unknown (too little
    evidence)."""
    findings: list[Finding]
    run_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Diagnosis:
        findings = [Finding(**{**f, "suggestions": [Suggestion(**s) for s in f["suggestions"]]})
                    for f in data["findings"]]
        return cls(data["state"], findings, data.get("run_dir", ""))

    def text(self) -> str:
        """The diagnosis as a person reads it in a terminal."""
        lines = [f"diagnosis of {self.run_dir}: {self.state.upper()}"]
        for finding in self.findings:
            lines.append(f"\n* {finding.title}")
            lines += [f"    - {line}" for line in finding.evidence]
            for example in finding.examples[:5]:
                lines.append("      " + _example_line(example))
            for suggestion in finding.suggestions:
                paste = f"  ->  {' '.join(suggestion.overrides)}" if suggestion.overrides else ""
                lines.append(f"    try: {suggestion.why}{paste}")
        return "\n".join(lines)


def _example_line(example: dict[str, Any]) -> str:
    parts = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in example.items()]
    text = ", ".join(parts)
    return text if len(text) <= 160 else text[:157] + "..."

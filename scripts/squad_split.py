"""Split the shared SQuAD v1.1 dev set by article into train and evaluation files.

The 48 articles are sorted by title; every 4th (indices 0, 4, 8, ...: 12 articles) goes to
evaluation, the other 36 to training, so no article is on both sides.

    python scripts/squad_split.py [--out data/squad-split]   # writes train.jsonl and eval.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad" / "dev-v1.1.jsonl"


def split(source: Path = SQUAD) -> tuple[list[dict], list[dict]]:
    """(train rows, evaluation rows), each in file order."""
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    titles = sorted({row["title"] for row in rows})
    held_out = {title for i, title in enumerate(titles) if i % 4 == 0}
    return [r for r in rows if r["title"] not in held_out], [r for r in rows if r["title"] in held_out]


def write(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/squad-split"))
    args = parser.parse_args()
    train, evaluation = split()
    write(train, args.out / "train.jsonl")
    write(evaluation, args.out / "eval.jsonl")
    print(f"train: {len(train)} questions, eval: {len(evaluation)} questions -> {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()

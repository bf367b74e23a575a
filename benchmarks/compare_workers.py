"""The same 5-strategy comparison with 1 and with 2 worker processes on a PostgreSQL study.

    python benchmarks/compare_workers.py                 # 2,000 SST-2 rows, 60 steps per trial
    python benchmarks/compare_workers.py --budget 30     # shorter

A PostgreSQL server is started in a temp dir on a free loopback port (Debian's postgresql; initdb as the
postgres user when run as root). Each worker trains with 1 thread (`train.threads=1`), so two workers use
the two cores a single one leaves half idle. Prints each wall time and whether the winners agree.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "data" / "sst2"
STRATEGIES = "full,freeze,head,lora,bitfit"


def start_postgres(folder: str) -> tuple[str, list[str], str]:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(folder, "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = os.path.join(folder, "data")
    subprocess.run([*as_postgres, f"{bins[-1]}/initdb", "-D", data, "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True)
    subprocess.run([*as_postgres, f"{bins[-1]}/pg_ctl", "-D", data, "-l", os.path.join(folder, "log"), "-w", "-o",
                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    for db in ("one", "two"):
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", f"CREATE DATABASE {db}"],
                       check=True, capture_output=True)
    stop = [*as_postgres, f"{bins[-1]}/pg_ctl", "-D", data, "-m", "fast", "stop"]
    return f"postgresql://postgres@127.0.0.1:{port}", stop, data


def command(tmp: str, url: str, out: str, rows: int, budget: int) -> list[str]:
    return [sys.executable, "-m", "lmtune", "compare", str(REPO / "examples" / "sst2.yaml"),
            f"data.train={SST2 / 'train.tsv'}", f"data.validation={SST2 / 'dev.tsv'}",
            f"data.max_train_samples={rows}", "data.max_eval_samples=400", "train.threads=1",
            "train.eval_train_samples=0", "--strategies", STRATEGIES, "--budget", str(budget), "--no-prune",
            "--storage", url, "--out", out, "--heartbeat", "10"]


def winner(stdout: str) -> str:
    return stdout.split("winner: ")[1].split()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--budget", type=int, default=60)
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    folder = tempfile.mkdtemp(prefix="lmtune-bench-pg-")
    url, stop, _ = start_postgres(folder)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.monotonic()
            one = subprocess.run(command(tmp, f"{url}/one", f"{tmp}/one", args.rows, args.budget), env=env,
                                 capture_output=True, text=True, cwd=REPO)
            one_s = time.monotonic() - started
            if one.returncode:
                raise SystemExit(one.stderr[-3000:])
            started = time.monotonic()
            workers = [subprocess.Popen(command(tmp, f"{url}/two", f"{tmp}/two", args.rows, args.budget), env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
                       for _ in range(2)]
            outputs = [w.communicate() for w in workers]
            two_s = time.monotonic() - started
            if any(w.returncode for w in workers):
                raise SystemExit("\n".join(err[-3000:] for _, err in outputs))
    finally:
        subprocess.run(stop, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
    winners = [winner(one.stdout)] + [winner(out) for out, _ in outputs]
    print(f"| workers | wall s | winner |\n|---|---|---|\n| 1 | {one_s:.1f} | {winners[0]} |\n"
          f"| 2 | {two_s:.1f} | {winners[1]} (both workers print {winners[1]} and {winners[2]}) |")
    print(f"\n2 workers: {one_s / two_s:.2f}x faster; winners agree: {len(set(winners)) == 1}")
    print(one.stdout)


if __name__ == "__main__":
    main()

"""Load on `lmtune serve`, loopback only, bounded in requests and time.

    python benchmarks/serve_load.py                      # all phases, 10-minute soak
    python benchmarks/serve_load.py --soak-seconds 60    # a shorter soak

Phases (each against a fresh server process, one SST-2 dev sentence per request):
  1. closed loop, 1 and 32 concurrent clients, batched (defaults) vs --max-batch-size 1: requests/s, p50/p99;
  2. overload: open-loop arrivals at twice the batched server's saturated rate, with --max-queue 32: how fast
     the excess is refused (429) and the p99 of the accepted requests;
  3. soak: 32 closed-loop clients for --soak-seconds; the server's RSS after warm-up and at the end;
  4. a causal LM (stories260K): generated tokens/s with 1 stream and with 8 concurrent streams.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def lmtune(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmtune", *args], cwd=REPO, env=ENV, check=True,
                          capture_output=True, text=True, **kwargs)


class Server:
    def __init__(self, runs: list[str], *options: str):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "lmtune", "serve", *runs, "--port", str(self.port),
                                      "--log-level", "warning", *options], cwd=REPO, env=ENV)
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/ready", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit("server not ready")

    def rss_mib(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def closed_loop(url: str, sentences: list[str], clients: int, seconds: float) -> dict:
    """``clients`` each send one sentence, wait for the answer, and send the next, for ``seconds``."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    end = time.monotonic() + seconds

    async def client(k: int, http: httpx.AsyncClient) -> None:
        i = k
        while time.monotonic() < end:
            started = time.monotonic()
            response = await http.post(f"{url}/v1/predict", json={"inputs": [sentences[i % len(sentences)]]})
            latencies.append(time.monotonic() - started)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            i += clients

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as http:
        began = time.monotonic()
        await asyncio.gather(*(client(k, http) for k in range(clients)))
        elapsed = time.monotonic() - began
    return {"clients": clients, "requests": len(latencies), "rps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(1000 * percentile(latencies, 0.5), 1),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 1), "statuses": statuses}


async def open_loop(url: str, sentences: list[str], rate: float, seconds: float) -> dict:
    """Requests arrive at ``rate`` per second whatever the answers (the load a server cannot slow down)."""
    accepted: list[float] = []
    refused: list[float] = []

    async def one(i: int, http: httpx.AsyncClient) -> None:
        started = time.monotonic()
        response = await http.post(f"{url}/v1/predict", json={"inputs": [sentences[i % len(sentences)]]})
        (accepted if response.status_code == 200 else refused).append(time.monotonic() - started)
        assert response.status_code in (200, 429), response.text

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=2000)) as http:
        tasks, start = [], time.monotonic()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(i, http)))
        await asyncio.gather(*tasks)
    return {"offered_rps": round(rate, 1), "accepted": len(accepted), "refused_429": len(refused),
            "accepted_p99_ms": round(1000 * percentile(accepted, 0.99), 1),
            "refused_p99_ms": round(1000 * percentile(refused, 0.99), 1)}


async def streams(url: str, count: int, seconds: float) -> dict:
    """``count`` concurrent clients each streaming completions of up to 128 tokens, for ``seconds``."""
    tokens = 0
    end = time.monotonic() + seconds

    async def client(k: int, http: httpx.AsyncClient) -> None:
        nonlocal tokens
        seed = k
        while time.monotonic() < end:
            body = {"prompt": "Once upon a time", "max_tokens": 128, "temperature": 0.8, "seed": seed,
                    "stream": True, "stream_options": {"include_usage": True}}
            async with http.stream("POST", f"{url}/v1/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {") and '"usage"' in line:
                        tokens += json.loads(line[6:])["usage"]["completion_tokens"]
            seed += count

    async with httpx.AsyncClient(timeout=120) as http:
        began = time.monotonic()
        await asyncio.gather(*(client(k, http) for k in range(count)))
        elapsed = time.monotonic() - began
    return {"streams": count, "tokens": tokens, "tokens_per_s": round(tokens / elapsed, 1)}


def classifier(tmp: Path) -> Path:
    """A classifier run on the bundled MiniLM (a few steps: serving speed does not depend on its accuracy)."""
    out = tmp / "cls"
    lmtune("train", str(REPO / "examples" / "sst2.yaml"), f"output={out}", "data.max_train_samples=256",
           "data.max_eval_samples=64", "train.max_steps=8", "train.eval_train_samples=0")
    return out


def table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20, help="length of each load phase")
    parser.add_argument("--soak-seconds", type=float, default=600)
    args = parser.parse_args()
    with (SHARED / "sst2" / "dev.tsv").open(encoding="utf-8") as handle:
        sentences = [row["sentence"] for row in csv.DictReader(handle, delimiter="\t")]
    with tempfile.TemporaryDirectory() as tmp:
        run = str(classifier(Path(tmp)))
        rows = []
        for name, options in (("batched", []), ("max-batch-size 1", ["--max-batch-size", "1"])):
            server = Server([run], *options)
            asyncio.run(closed_loop(server.url, sentences, 8, 3))  # warm-up
            for clients in (1, 32):
                rows.append({"server": name, **asyncio.run(closed_loop(server.url, sentences, clients, args.seconds))})
            server.stop()
        print(table(rows, ["server", "clients", "requests", "rps", "p50_ms", "p99_ms", "statuses"]))
        batched, single = rows[1], rows[3]
        print(f"\nbatched / unbatched throughput at 32 clients: {batched['rps'] / single['rps']:.2f}x; "
              f"batched p99 at 32 clients: {batched['p99_ms']} ms")

        server = Server([run], "--max-queue", "32")
        asyncio.run(closed_loop(server.url, sentences, 8, 3))
        saturated = asyncio.run(closed_loop(server.url, sentences, 32, args.seconds))
        overload = asyncio.run(open_loop(server.url, sentences, 2 * saturated["rps"], args.seconds))
        server.stop()
        print("\n" + table([{**saturated, "phase": "saturated (32 clients)"}],
                           ["phase", "rps", "p50_ms", "p99_ms"]))
        print(table([overload], list(overload)))
        print(f"overload: accepted p99 {overload['accepted_p99_ms']} ms = "
              f"{overload['accepted_p99_ms'] / saturated['p99_ms']:.2f}x the saturated p99 without overload; "
              f"429s answered with p99 {overload['refused_p99_ms']} ms")

        server = Server([run])
        asyncio.run(closed_loop(server.url, sentences, 32, 10))  # warm-up: allocator and caches settle
        before = server.rss_mib()
        soak = asyncio.run(closed_loop(server.url, sentences, 32, args.soak_seconds))
        after = server.rss_mib()
        server.stop()
        print(f"\nsoak: {soak['requests']} requests in {args.soak_seconds:g} s ({soak['rps']} rps, statuses "
              f"{soak['statuses']}); RSS {before:.0f} MiB -> {after:.0f} MiB ({100 * (after / before - 1):+.1f}%)")

        stories = Path(tmp) / "stories260K"
        lmtune("import", "llama2c", str(SHARED / "models" / "stories260K"), str(stories))
        server = Server([str(stories)])
        asyncio.run(streams(server.url, 2, 3))
        lm = [asyncio.run(streams(server.url, n, args.seconds)) for n in (1, 8)]
        server.stop()
        print("\n" + table(lm, ["streams", "tokens", "tokens_per_s"]))
        print(f"8 streams / 1 stream: {lm[1]['tokens_per_s'] / lm[0]['tokens_per_s']:.2f}x tokens/s")


if __name__ == "__main__":
    main()

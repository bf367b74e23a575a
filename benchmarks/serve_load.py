"""Load on `lmtune serve`, loopback only, bounded in requests and time.

    python benchmarks/serve_load.py                      # all phases, 10-minute soak
    python benchmarks/serve_load.py --soak-seconds 60    # a shorter soak
    python benchmarks/serve_load.py --phases backend,adapters   # onnxruntime vs torch; several adapters

Phases (each against a fresh server process, one SST-2 dev sentence per request):
  1. closed loop, 1 and 32 concurrent clients, batched (defaults) vs --max-batch-size 1: requests/s, p50/p99;
  2. overload: open-loop arrivals at twice the batched server's saturated rate, with --max-queue 32: how fast
     the excess is refused (429) and the p99 of the accepted requests;
  3. soak: 32 closed-loop clients for --soak-seconds; the server's RSS after warm-up and at the end;
  4. a causal LM (stories260K): generated tokens/s with 1 stream and with 8 concurrent streams;
  5. backend: the classifier at 32 clients on torch and on onnxruntime (--backend onnx or onnx-int8);
  6. adapters: 4 LoRA runs of the bundled model behind one server, mixed requests at 32 clients, against a
     server of one of them: resident memory and throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from lmtune.serving.process import ServeProcess

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def lmtune(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmtune", *args], cwd=REPO, env=ENV, check=True,
                          capture_output=True, text=True, **kwargs)


class Server(ServeProcess):
    """`lmtune serve` of the repository, with the RSS of its process."""

    def __init__(self, runs: list[str], *options: str):
        super().__init__(runs, "--log-level", "warning", *options, cwd=REPO, env=ENV)
        self.wait_ready(300)

    def rss_mib(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20


class Connection:
    """A lean HTTP/1.1 keep-alive client (asyncio streams): on 2 cores an httpx client takes a good share of
    the CPU the server needs, so the load generator does as little as it can."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict) -> tuple[int, dict[str, str], bytes]:
        reused = self.writer is not None
        try:
            return await self._post(path, body)
        except (asyncio.IncompleteReadError, ConnectionError):
            if not reused:
                raise
            self.reader = self.writer = None  # the server closed it while idle (keep-alive timeout): reconnect
            return await self._post(path, body)

    async def _post(self, path: str, body: dict) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        data = json.dumps(body).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
        content = await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            self.writer.close()
            self.reader = self.writer = None
        return int(head[0].split()[1]), headers, content


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def closed_loop(url: str, sentences: list[str], clients: int, seconds: float,
                      models: list[str] | None = None) -> dict:
    """``clients`` each send one sentence, wait for the answer, and send the next, for ``seconds``; with
    ``models``, request k names models[k % len(models)] (a server of several runs, mixed requests)."""
    port = int(url.rsplit(":", 1)[1])
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    end = time.monotonic() + seconds

    async def client(k: int) -> None:
        connection, i = Connection(port), k
        while time.monotonic() < end:
            started = time.monotonic()
            body = {"inputs": [sentences[i % len(sentences)]]}
            if models:
                body["model"] = models[i % len(models)]
            status, _, _ = await connection.post("/v1/predict", body)
            latencies.append(time.monotonic() - started)
            statuses[status] = statuses.get(status, 0) + 1
            i += clients

    began = time.monotonic()
    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.monotonic() - began
    return {"clients": clients, "requests": len(latencies), "rps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(1000 * percentile(latencies, 0.5), 1),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 1), "statuses": statuses}


async def open_loop(url: str, sentences: list[str], rate: float, seconds: float) -> dict:
    """Requests arrive at ``rate`` per second whatever the answers (the load a server cannot slow down)."""
    port = int(url.rsplit(":", 1)[1])
    accepted: list[float] = []
    refused: list[float] = []
    other: dict[int, int] = {}
    idle: list[Connection] = []

    async def one(i: int) -> None:
        connection = idle.pop() if idle else Connection(port)
        started = time.monotonic()
        status, headers, _ = await connection.post("/v1/predict", {"inputs": [sentences[i % len(sentences)]]})
        elapsed = time.monotonic() - started
        idle.append(connection)
        if status == 200:
            accepted.append(elapsed)
        elif status == 429 and int(headers["retry-after"]) >= 1:
            refused.append(elapsed)
        else:
            other[status] = other.get(status, 0) + 1

    tasks, start = [], time.monotonic()
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return {"offered_rps": round(rate, 1), "accepted": len(accepted), "refused_429": len(refused),
            "other": other, "accepted_p99_ms": round(1000 * percentile(accepted, 0.99), 1),
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


def server_p99_ms(metrics: str, status: str) -> float:
    """The p99 of the server's own request time for ``status`` answers of /v1/predict: the upper bound of the
    histogram bucket that holds it (the time the server spends, without the client's own delays)."""
    buckets = [(float(m.group(1)), float(m.group(2))) for m in re.finditer(
        rf'lmtune_request_seconds_bucket{{le="([^"]+)",route="predict",status="{status}"}} (\S+)', metrics)]
    total = max((n for _, n in buckets), default=0)
    return next((round(1000 * le, 1) for le, n in sorted(buckets) if n >= 0.99 * total), float("nan"))


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
    parser.add_argument("--phases", default="load,overload,soak,lm,backend,adapters",
                        help="which phases to run (comma-separated)")
    parser.add_argument("--backend", default="onnx", choices=["onnx", "onnx-int8"],
                        help="the backend phase: onnxruntime backend compared with torch")
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    with (SHARED / "sst2" / "dev.tsv").open(encoding="utf-8") as handle:
        sentences = [row["sentence"] for row in csv.DictReader(handle, delimiter="\t")]
    with tempfile.TemporaryDirectory() as tmp:
        run = str(classifier(Path(tmp)))
        if "load" in phases:
            load_phase(run, sentences, args.seconds)
        if "overload" in phases:
            overload_phase(run, sentences, args.seconds)
        if "soak" in phases:
            soak_phase(run, sentences, args.soak_seconds)
        if "lm" in phases:
            lm_phase(Path(tmp), args.seconds)
        if "backend" in phases:
            backend_phase(run, sentences, args.seconds, args.backend)
        if "adapters" in phases:
            adapters_phase(Path(tmp), sentences, args.seconds)


def backend_phase(run: str, sentences: list[str], seconds: float, backend: str) -> None:
    """The classifier at 32 clients on torch and on onnxruntime (the graph `lmtune export --format onnx` wrote)."""
    lmtune("export", run, "--format", "onnx", *(["--quantize", "int8"] if backend == "onnx-int8" else []))
    fp32 = fp32_copy(Path(run))
    rows = []
    for name, served, engine in (("torch", run, "torch"), ("torch fp32", fp32, "torch"), (backend, run, backend)):
        server = Server([str(served)], "--backend", engine)
        asyncio.run(closed_loop(server.url, sentences, 8, 3))  # warm-up
        rows.append({"backend": name, **asyncio.run(closed_loop(server.url, sentences, 32, seconds)),
                     "rss_mib": round(server.rss_mib())})
        server.stop()
    print("\n" + table(rows, ["backend", "clients", "requests", "rps", "p50_ms", "p99_ms", "rss_mib", "statuses"]))
    print(f"\n{backend} / torch throughput at 32 clients: {rows[2]['rps'] / rows[0]['rps']:.2f}x (torch computes in "
          f"{'bf16' if bf16_cpu() else 'fp32'} on this CPU); {backend} / torch in fp32 (a CPU without bf16): "
          f"{rows[2]['rps'] / rows[1]['rps']:.2f}x")


def fp32_copy(run: Path) -> Path:
    """The run with train.precision fp32: torch scores it as it would on a CPU without bf16."""
    import shutil

    import yaml

    copy = run.with_name(run.name + "-fp32")
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints"), dirs_exist_ok=True)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["train"]["precision"] = "fp32"
    (copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return copy


def bf16_cpu() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def adapters_phase(tmp: Path, sentences: list[str], seconds: float) -> None:
    """4 LoRA runs of the bundled model behind one server (one base, mixed batches) vs one of them alone."""
    runs = []
    for k in range(4):
        out = tmp / f"lora{k}"
        lmtune("train", str(REPO / "examples" / "sst2.yaml"), f"output={out}", "strategy.name=lora",
               f"data.max_train_samples={256 * (k + 1)}", "data.max_eval_samples=64", "train.max_steps=8",
               "train.eval_train_samples=0", f"train.seed={k}")
        runs.append(f"a{k}={out}")
    rows = []
    for name, served, models in (("1 LoRA run", runs[:1], None), ("4 LoRA runs, mixed", runs, ["a0", "a1", "a2",
                                                                                               "a3"])):
        server = Server(served)
        asyncio.run(closed_loop(server.url, sentences, 8, 3, models))  # warm-up
        rows.append({"server": name, **asyncio.run(closed_loop(server.url, sentences, 32, seconds, models)),
                     "rss_mib": round(server.rss_mib())})
        server.stop()
    print("\n" + table(rows, ["server", "clients", "requests", "rps", "p50_ms", "p99_ms", "rss_mib", "statuses"]))
    print(f"\n4 adapters / 1: resident memory {rows[1]['rss_mib'] / rows[0]['rss_mib']:.2f}x, throughput "
          f"{rows[1]['rps'] / rows[0]['rps']:.2f}x at 32 clients")


def load_phase(run: str, sentences: list[str], seconds: float) -> None:
    rows = []
    for name, options in (("batched", []), ("max-batch-size 1", ["--max-batch-size", "1"])):
        server = Server([run], *options)
        asyncio.run(closed_loop(server.url, sentences, 8, 3))  # warm-up
        for clients in (1, 32):
            rows.append({"server": name, **asyncio.run(closed_loop(server.url, sentences, clients, seconds))})
        server.stop()
    print(table(rows, ["server", "clients", "requests", "rps", "p50_ms", "p99_ms", "statuses"]))
    batched, single = rows[1], rows[3]
    print(f"\nbatched / unbatched throughput at 32 clients: {batched['rps'] / single['rps']:.2f}x; "
          f"batched p99 at 32 clients: {batched['p99_ms']} ms")


def overload_phase(run: str, sentences: list[str], seconds: float) -> None:
    server = Server([run], "--max-queue", "32")
    asyncio.run(closed_loop(server.url, sentences, 8, 3))
    unloaded = asyncio.run(closed_loop(server.url, sentences, 1, seconds / 2))
    saturated = asyncio.run(closed_loop(server.url, sentences, 32, seconds))
    overload = asyncio.run(open_loop(server.url, sentences, 2 * saturated["rps"], seconds))
    metrics = httpx.get(f"{server.url}/metrics").text
    server.stop()
    overload["server_200_p99_ms"] = server_p99_ms(metrics, "200")
    overload["server_429_p99_ms"] = server_p99_ms(metrics, "429")
    print("\n" + table([{**unloaded, "phase": "1 client"}, {**saturated, "phase": "saturated (32 clients)"}],
                       ["phase", "rps", "p50_ms", "p99_ms"]))
    print(table([overload], list(overload)))
    print(f"overload: accepted p99 {overload['accepted_p99_ms']} ms at the client "
          f"({overload['server_200_p99_ms']} ms inside the server, which counts the warm-up and saturated phases "
          "too) = "
          f"{overload['accepted_p99_ms'] / saturated['p99_ms']:.2f}x the saturated p99 without overload "
          f"({overload['accepted_p99_ms'] / unloaded['p99_ms']:.2f}x the 1-client p99); "
          f"429s answered with p99 {overload['refused_p99_ms']} ms at the client, "
          f"{overload['server_429_p99_ms']} ms inside the server")


def soak_phase(run: str, sentences: list[str], soak_seconds: float) -> None:
    server = Server([run])
    asyncio.run(closed_loop(server.url, sentences, 32, 10))  # warm-up: allocator and caches settle
    before = server.rss_mib()
    samples, requests, statuses = [], 0, {}
    chunks = max(1, round(soak_seconds / 60))
    for _ in range(chunks):  # the RSS after every minute of load
        part = asyncio.run(closed_loop(server.url, sentences, 32, soak_seconds / chunks))
        requests += part["requests"]
        for status, n in part["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
        samples.append(round(server.rss_mib()))
    server.stop()
    after = samples[-1]
    print(f"\nsoak: {requests} requests in {soak_seconds:g} s ({requests / soak_seconds:.1f} rps, "
          f"statuses {statuses}); RSS after warm-up {before:.0f} MiB, then per minute {samples}: "
          f"{100 * (after / before - 1):+.1f}% overall, {100 * (after / samples[0] - 1):+.1f}% after the first "
          "minute")


def lm_phase(tmp: Path, seconds: float) -> None:
    stories = tmp / "stories260K"
    lmtune("import", "llama2c", str(SHARED / "models" / "stories260K"), str(stories))
    server = Server([str(stories)])
    asyncio.run(streams(server.url, 2, 3))
    lm = [asyncio.run(streams(server.url, n, seconds)) for n in (1, 8)]
    server.stop()
    print("\n" + table(lm, ["streams", "tokens", "tokens_per_s"]))
    print(f"8 streams / 1 stream: {lm[1]['tokens_per_s'] / lm[0]['tokens_per_s']:.2f}x tokens/s")


if __name__ == "__main__":
    main()

"""Several LoRA runs of the bundled model behind one server: one base, one queue, batches that mix adapters."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.integration

TEXTS = ["a wonderful, moving film", "dull, flat and far too long", "it has a few good moments",
         "the worst script of the year", "an actor at the top of his game"]


def test_one_mixed_batch_gives_each_run_its_own_predictions(lora_runs):
    """The group's router scores requests for three adapters in one batch, as each run alone would."""
    import lmtune
    from lmtune.serving.served import load_runs, predict, table_of

    served, _ = load_runs([f"r{k}={run}" for k, run in enumerate(lora_runs)])
    assert len({id(s.loaded.model) for s in served}) == 1 and served[0].group.runs == ["r0", "r1", "r2"]
    group = served[0].group
    payloads = []
    for k, s in enumerate(served):
        rows = [{"sentence": t} for t in TEXTS[k:k + 3]]
        payloads.append((s, s.loaded.encode_inputs(table_of(rows)), len(rows)))
    mixed = predict(payloads, group.router, 32, group.bf16_copies)
    for k, (run, answer) in enumerate(zip(lora_runs, mixed, strict=True)):
        alone = lmtune.load(run).predict(TEXTS[k:k + 3])
        assert [a["label"] for a in answer] == [b["label"] for b in alone]
        # bf16 on a batch of other rows and padding: equal to bf16's precision
        assert max(abs(a["score"] - b["score"]) for a, b in zip(answer, alone, strict=True)) < 5e-3
    # the three adapters really differ: the same text gets three different scores
    one = [predict([(s, s.loaded.encode_inputs(table_of([{"sentence": TEXTS[0]}])), 1)], group.router, 32,
                   group.bf16_copies)[0][0]["score"] for s in served]
    assert len({round(v, 4) for v in one}) == 3


def test_the_server_answers_mixed_concurrent_requests_from_one_queue(lora_runs):
    from starlette.testclient import TestClient

    import lmtune

    expected = {f"r{k}": lmtune.load(run).predict(TEXTS) for k, run in enumerate(lora_runs)}
    app = lmtune.serve([f"r{k}={run}" for k, run in enumerate(lora_runs)], max_wait_ms=50)
    with TestClient(app) as client:
        deadline = time.time() + 120
        while client.get("/ready").status_code != 200:
            assert time.time() < deadline, client.get("/ready").json()
            time.sleep(0.1)
        info = client.get("/info").json()["runs"]
        assert all(run["adapter_group"] == ["r0", "r1", "r2"] for run in info)
        state = app.state.lmtune
        assert [key for key in state.batchers if key[1] == "predict"] == [("adapters:r0", "predict")]

        def ask(k: int) -> tuple[str, list]:
            name = f"r{k % 3}"
            answer = client.post("/v1/predict", json={"model": name, "inputs": TEXTS})
            assert answer.status_code == 200, answer.text
            return name, answer.json()["predictions"]

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(ask, range(24)))
        for name, predictions in answers:
            assert [p["label"] for p in predictions] == [p["label"] for p in expected[name]]
            assert max(abs(a["score"] - b["score"]) for a, b in zip(predictions, expected[name], strict=True)) < 5e-3
        metrics = client.get("/metrics").text
        assert 'model="adapters:r0"' in metrics
        # an explanation of one run is computed on its own adapter only
        explained = client.post("/v1/explain", json={"model": "r1", "text": TEXTS[0], "method": "gradxinput"})
        assert explained.status_code == 200, explained.text
        assert json.loads(explained.text)["explanations"][0]["predicted"] == expected["r1"][0]["label"]

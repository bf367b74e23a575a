"""ONNX export, checked against PyTorch on real SST-2 rows, and prediction on onnxruntime (`--backend onnx`)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.conftest import read_tsv, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """A copy of the shared SST-2 run (without its checkpoints), exported to ONNX with an int8 graph beside."""
    run = tmp_path_factory.mktemp("onnx") / "sst2"
    shutil.copytree(trained_run[0], run, ignore=shutil.ignore_patterns("checkpoints"))
    result = run_cli("export", run, "--format", "onnx", "--quantize", "int8")
    assert result.returncode == 0, result.stderr
    return run, result.stdout.strip()


def test_the_export_is_checked_and_its_numbers_are_stated(exported, sst2_slice):
    run, line = exported
    checks = json.loads((run / "onnx" / "onnx.json").read_text())
    assert checks["outputs"] == ["logits"] and checks["rows"] > 0 and checks["max_abs_diff"] <= 1e-4
    assert line.startswith(f"{run / 'onnx'}: largest |logit difference| onnxruntime vs PyTorch fp32 ")
    assert "int8: loss" in line and "accuracy" in checks["int8"]["int8"]
    assert abs(checks["int8"]["int8"]["accuracy"] - checks["int8"]["torch"]["accuracy"]) <= 0.05

    # an independent check: onnxruntime itself against the transformers model, in fp32, on other dev rows
    import onnxruntime as ort
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    sentences = [r["sentence"] for r in read_tsv(sst2_slice["dev"])[-24:]]
    tokenizer = AutoTokenizer.from_pretrained(run / "onnx")
    inputs = tokenizer(sentences, padding=True, return_tensors="np")
    session = ort.InferenceSession(str(run / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    (logits,) = session.run(["logits"], feed)
    model = AutoModelForSequenceClassification.from_pretrained(run / "model").float().eval()
    with torch.no_grad():
        expected = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits
    assert float((torch.from_numpy(logits) - expected).abs().max()) <= 1e-4


def test_predict_on_onnxruntime_gives_the_torch_path_rows(exported, sst2_slice, tmp_path, cli):
    run, _ = exported
    rows = read_tsv(sst2_slice["dev"])[:30]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"sentence": r["sentence"]}) + "\n" for r in rows))
    answers = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        result = cli("predict", run, "--input", data, "--backend", backend)
        assert result.returncode == 0, result.stderr
        answers[backend] = [json.loads(line) for line in result.stdout.splitlines()]
    torch_rows, onnx_rows = answers["torch"], answers["onnx"]
    assert [r["text"] for r in onnx_rows] == [r["sentence"] for r in rows]
    # the torch path computes in bf16 on this CPU, onnxruntime in fp32: the same labels, scores within bf16's noise
    assert sum(a["label"] == b["label"] for a, b in zip(torch_rows, onnx_rows, strict=True)) >= 29
    assert max(abs(a["score"] - b["score"]) for a, b in zip(torch_rows, onnx_rows, strict=True)
               if a["label"] == b["label"]) < 0.03
    assert sum(a["label"] == b["label"] for a, b in zip(onnx_rows, answers["onnx-int8"], strict=True)) >= 26


def test_serve_on_onnxruntime_answers_as_predict_does(exported):
    import time

    from starlette.testclient import TestClient

    import lmtune

    run, _ = exported
    sentences = ["a wonderful, moving film", "dull and far too long", "it is a film"]
    with TestClient(lmtune.serve(f"sst2={run}", backend="onnx", max_batch_size=4)) as client:
        deadline = time.time() + 120
        while client.get("/ready").status_code != 200:
            assert time.time() < deadline, client.get("/ready").json()
            time.sleep(0.1)
        [info] = client.get("/info").json()["runs"]
        assert info["backend"] == "onnx" and "/v1/explain" not in info["endpoints"]
        answer = client.post("/v1/predict", json={"inputs": sentences})
        assert answer.status_code == 200, answer.text
        expected = lmtune.load(run, backend="onnx").predict(sentences)
        assert answer.json()["predictions"] == [{"text": t, **e} for t, e in zip(sentences, expected, strict=True)]
        refused = client.post("/v1/explain", json={"text": sentences[0]})
        assert refused.status_code == 422 and "explain supports" in refused.json()["error"]["message"]


def test_onnx_refusals_are_one_line(exported, trained_run, stories260k, tmp_path, cli):
    run, _ = exported
    result = cli("predict", trained_run[0], "--input", "-", "--backend", "onnx")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        f"lmtune: error: {trained_run[0]}: no onnx/model.onnx; run `lmtune export {trained_run[0]} --format onnx` "
        "first")
    data = tmp_path / "in.txt"
    data.write_text("a fine film\n")
    result = cli("predict", stories260k, "--input", data, "--backend", "onnx")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        "lmtune: error: --backend onnx: task 'causal_lm' generates text, which runs on torch; the ONNX export of a "
        "decoder gives its logits (checked at export)")
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "onnx" / "model.onnx").write_bytes(b"not a graph")
    result = cli("predict", broken, "--input", data, "--backend", "onnx")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"lmtune: error: {broken / 'onnx' / 'model.onnx'}: not a loadable ONNX model (")
    assert cli("export", run, "--quantize", "int8").stderr.strip().endswith(
        "lmtune: error: quantize 'int8': not with format transformers (it takes: onnx int8; gguf f16 or q8_0)")
    assert cli("export", run, "--format", "onnx", "--quantize", "q8_0").stderr.strip().endswith(
        "lmtune: error: quantize 'q8_0': not with format onnx (it takes: onnx int8; gguf f16 or q8_0)")

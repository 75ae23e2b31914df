"""A multi-task bundle served and batch-predicted: the request (or ``--task``) names the head,
or gets every head's answer.

The bundle (``mt_bundle`` in conftest.py) comes from a tiny BERT carrying SST-2 (own), Subj and TREC heads, exported to
one ONNX graph with one output per task. Every answer is checked against the graph run
directly (each head's own output), and against a single-task bundle of the same model
for the own head, so a server that answers with the wrong head fails.
"""
from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

TREC = ["DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"]
TEXTS = ["What is the capital of France ?", "a gripping, beautifully acted film", "dull and far too long"]


def _direct(bundle_dir, output: str, texts) -> np.ndarray:
    from transformers import AutoTokenizer

    from compress.onnx_export import onnx_logits, ort_session
    from deploy.runtime import softmax

    tok = AutoTokenizer.from_pretrained(bundle_dir)
    enc = dict(tok(texts, padding=True, truncation=True, max_length=128, return_tensors="np"))
    return softmax(onnx_logits(ort_session(bundle_dir / "model.onnx"), enc, output))


@pytest.fixture(scope="module")
def client(mt_bundle):
    from deploy.server import ServerConfig, create_app

    with TestClient(create_app(ServerConfig(bundle=str(mt_bundle[0]), name="mt", threads=1))) as c:
        yield c


def test_bundle_lists_tasks_and_labels(mt_bundle):
    from deploy.bundle import Bundle

    b = Bundle.load(mt_bundle[0])
    assert list(b.tasks) == ["sst2", "subj", "trec"]  # own task first
    assert b.tasks["trec"] == {"output": "logits_trec", "labels": TREC}
    assert b.labels == ["negative", "positive"] and b.task == "sst2"
    assert Bundle.load(mt_bundle[1]).tasks == {}


def test_metadata_lists_every_head(client):
    meta = client.get("/v2/models/mt").json()
    assert meta["parameters"]["tasks"]["subj"] == ["subjective", "objective"]
    assert meta["parameters"]["task"] == "sst2"
    shapes = {o["name"]: o["shape"] for o in meta["outputs"]}
    assert shapes["scores_trec"] == [-1, 6] and shapes["scores"] == [-1, 2] and "label_subj" in shapes


def test_predict_named_task_answers_with_that_head(client, mt_bundle):
    r = client.post("/predict", json={"texts": TEXTS, "task": "trec"})
    assert r.status_code == 200, r.text
    body = r.json()
    want = _direct(mt_bundle[0], "logits_trec", TEXTS)
    assert body["task"] == "trec" and body["labels"] == [TREC[k] for k in want.argmax(-1)]
    got = np.array([[row[name] for name in TREC] for row in body["scores"]])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_predict_without_task_gets_every_head(client, mt_bundle):
    body = client.post("/predict", json={"texts": TEXTS}).json()
    assert set(body["tasks"]) == {"sst2", "subj", "trec"}
    for task, out in (("subj", "logits_subj"), ("trec", "logits_trec"), ("sst2", "logits")):
        want = _direct(mt_bundle[0], out, TEXTS)
        names = list(body["tasks"][task]["scores"][0])
        got = np.array([[row[n] for n in names] for row in body["tasks"][task]["scores"]])
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert body["labels"] == body["tasks"]["sst2"]["labels"]  # the own head, as a single-task client reads it


def test_own_head_equals_the_single_task_bundle(client, mt_bundle):
    from deploy.server import ServerConfig, create_app

    with TestClient(create_app(ServerConfig(bundle=str(mt_bundle[1]), name="one", threads=1))) as one:
        single = one.post("/predict", json={"texts": TEXTS}).json()
        bad = one.post("/predict", json={"texts": TEXTS, "task": "subj"})
    multi = client.post("/predict", json={"texts": TEXTS, "task": "sst2"}).json()
    assert single["labels"] == multi["labels"]
    np.testing.assert_allclose([list(r.values()) for r in single["scores"]],
                               [list(r.values()) for r in multi["scores"]], atol=1e-5)
    assert bad.status_code == 400 and "serves ['sst2']" in bad.json()["error"]


def test_v2_task_parameter_and_every_output(client, mt_bundle):
    req = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(TEXTS)], "data": TEXTS}],
           "parameters": {"task": "subj"}, "outputs": [{"name": "label"}, {"name": "scores"}]}
    out = {o["name"]: o for o in client.post("/v2/models/mt/infer", json=req).json()["outputs"]}
    want = _direct(mt_bundle[0], "logits_subj", TEXTS)
    assert out["label"]["data"] == [["subjective", "objective"][k] for k in want.argmax(-1)]
    np.testing.assert_allclose(np.array(out["scores"]["data"]).reshape(want.shape), want, atol=1e-5)
    every = client.post("/v2/models/mt/infer", json={"inputs": req["inputs"]}).json()["outputs"]
    names = {o["name"]: o for o in every}
    assert {"label", "scores", "label_sst2", "scores_subj", "label_trec", "scores_trec"} <= set(names)
    assert names["scores_trec"]["shape"] == [len(TEXTS), 6]


def test_unknown_task_is_one_line_400(client):
    r = client.post("/predict", json={"texts": TEXTS, "task": "sst5"})
    assert r.status_code == 400 and "unknown task 'sst5'" in r.json()["error"] and "\n" not in r.json()["error"]
    req = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}], "parameters": {"task": 3}}
    r = client.post("/v2/models/mt/infer", json=req)
    assert r.status_code == 400 and "task" in r.json()["error"]


def _predict(bundle_dir, tmp_path, name: str, tasks=None):
    from deploy.predict import PredictConfig, predict

    src = tmp_path / "in.tsv"
    src.write_text("sentence\tlabel\n" + "".join(f"{t}\tgold\n" for t in TEXTS))
    out = tmp_path / name
    res = predict(PredictConfig(str(bundle_dir), str(src), str(out), progress=False, tasks=tasks))
    return res, out


def test_batch_predict_writes_every_head_from_one_pass(mt_bundle, tmp_path):
    import json

    res, out = _predict(mt_bundle[0], tmp_path, "all.jsonl")
    assert res["tasks"] == ["sst2", "subj", "trec"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["sentence"] for r in rows] == TEXTS and all(r["label"] == "gold" for r in rows)  # input order, gold kept
    for task, output in (("sst2", "logits"), ("subj", "logits_subj"), ("trec", "logits_trec")):
        want = _direct(mt_bundle[0], output, TEXTS)
        got = np.array([list(r[f"pred_{task}_scores"].values()) for r in rows])
        np.testing.assert_allclose(got, want, atol=1e-5)
        labels = list(rows[0][f"pred_{task}_scores"])
        assert [r[f"pred_{task}_label"] for r in rows] == [labels[k] for k in want.argmax(-1)]
    assert list(rows[0]["pred_trec_scores"]) == TREC and "pred_label" not in rows[0]


def test_batch_predict_one_head_has_plain_columns(mt_bundle, tmp_path):
    import csv

    res, out = _predict(mt_bundle[0], tmp_path, "trec.csv", tasks=("trec",))
    rows = list(csv.DictReader(out.open()))
    want = _direct(mt_bundle[0], "logits_trec", TEXTS)
    assert res["tasks"] == ["trec"] and [r["pred_label"] for r in rows] == [TREC[k] for k in want.argmax(-1)]
    got = np.array([[float(r[f"pred_score_{lab}"]) for lab in TREC] for r in rows])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not any(k.startswith("pred_sst2") for k in rows[0])


def test_batch_predict_refuses_an_unknown_head_and_a_partial_for_other_heads(mt_bundle, tmp_path):
    import json
    import subprocess
    import sys

    from chain.errors import DataError

    src = tmp_path / "in.tsv"
    src.write_text("sentence\n" + "".join(f"{t}\n" for t in TEXTS))
    r = subprocess.run([sys.executable, "-m", "deploy", "predict", str(mt_bundle[0]), "--input", str(src),
                        "--output", str(tmp_path / "o.csv"), "--task", "sst5", "--quiet"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "no such head" in r.stderr and "sst2, subj, trec" in r.stderr
    # a partial file written for every head must not be resumed as the subj head alone
    from deploy.predict import Job, PredictConfig

    cfg = PredictConfig(str(mt_bundle[0]), str(src), str(tmp_path / "p.jsonl"), progress=False)
    key = Job.open(cfg).key
    assert key["tasks"] == ["sst2", "subj", "trec"]
    (tmp_path / "p.jsonl.partial").write_text(json.dumps(key) + "\n")
    with pytest.raises(DataError, match="set of heads"):
        Job.open(PredictConfig(str(mt_bundle[0]), str(src), str(tmp_path / "p.jsonl"), progress=False,
                               tasks=("subj",)))

"""`python -m bench --model DIR --finetuned`: a model fine-tuned by a plain Trainer script (no
chainpress) on string-labelled CSV data is the reference row, compressed as it is: no
training stage, and its ONNX export answers with the label names in `pipeline()`."""
import csv
import json
import subprocess
import sys

import pytest

from tests.chain.conftest import sentiment_rows
from tests.conftest import REPO, save_tiny_bert

NAMES = {0: "negative", 1: "positive"}


def _csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "sentiment"])
        w.writerows([(t, NAMES[y]) for y, t in rows])
    return path


@pytest.fixture(scope="module")
def trainer_model(tmp_path_factory):
    """What a user brings: Trainer + save_pretrained, id2label set by the user."""
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    d = tmp_path_factory.mktemp("user")
    base = save_tiny_bert(d / "base")
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2, id2label=NAMES,
                                                               label2id={v: k for k, v in NAMES.items()})
    rows = sentiment_rows(128, seed=3)
    data = [{**tok(t, truncation=True, max_length=16), "labels": y} for y, t in rows]
    torch.manual_seed(0)
    args = TrainingArguments(output_dir=str(d / "tmp"), num_train_epochs=8, learning_rate=2e-3,
                             per_device_train_batch_size=16, report_to=[], use_cpu=True, disable_tqdm=True,
                             save_strategy="no", logging_strategy="no")
    Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tok)).train()
    model.save_pretrained(d / "finetuned")
    tok.save_pretrained(d / "finetuned")
    files = {"train": _csv(d / "train.csv", sentiment_rows(64, seed=5)),
             "test": _csv(d / "test.csv", sentiment_rows(48, seed=7))}
    return d / "finetuned", files


def test_finetuned_model_is_the_reference_and_nothing_trains(trainer_model, tmp_path):
    model, files = trainer_model
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "bench", "--model", str(model), "--finetuned", "--train",
                        str(files["train"]), "--test", str(files["test"]), "--text-column", "text",
                        "--label-column", "sentiment", "--quick", "--no-peers", "--threads", "1", "-q",
                        "--output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900,
                       env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    rows = {s["name"]: s for s in res["stages"]}
    assert res["reference"] == "model" and rows["model"]["type"] == "use_model"
    assert not any(s["type"] == "finetune" for s in res["stages"])  # no training stage at all
    assert list(rows) == ["model", "int8", "onnx", "onnx-int8", "onnx-int4", "pruned", "kernels"]
    assert rows["model"]["accuracy"] >= 0.9  # the user's model, evaluated as it is
    assert rows["onnx"]["accuracy"] == rows["model"]["accuracy"]
    assert all(rows[n]["latency_ms"]["p50"] > 0 for n in ("model", "int8", "onnx-int8"))

    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    onnx_dir = rows["onnx-int8"]["artifact"]
    clf = pipeline("text-classification", model=ORTModelForSequenceClassification.from_pretrained(onnx_dir),
                   tokenizer=AutoTokenizer.from_pretrained(onnx_dir))
    answers = {a["label"] for a in clf(["a really great and wonderful film", "awful , boring and bad"])}
    assert answers <= set(NAMES.values()) and answers


def test_labels_in_another_order_are_refused(trainer_model, tmp_path):
    from chain.errors import SpecError
    from chain.executor import run_chain
    from chain.spec import parse_spec

    model, files = trainer_model
    spec = parse_spec({"name": "t", "model": str(model), "tasks": {"c": {
        "files": {k: str(v) for k, v in files.items()}, "text_column": "text", "label_column": "sentiment",
        "labels": ["positive", "negative"]}}, "stages": [{"name": "model", "type": "use_model", "task": "c"}]})
    res = run_chain(spec, tmp_path / "o", log=lambda m: None)
    row = res["stages"][0]
    assert row["status"] == "failed" and "give the task `labels: ['negative', 'positive']`" in row["reason"]
    with pytest.raises(SpecError, match="--finetuned needs --model"):
        from bench.spec import BenchConfig, bench_spec

        bench_spec(BenchConfig(finetuned=True))


def test_an_onnx_directory_as_optimum_cli_writes_it(trainer_model, tmp_path):
    """model.onnx + config.json + tokenizer, no chainpress manifest: read as an ONNX model,
    evaluated as it is by a use_model stage and quantized from there."""
    from chain.artifact import Artifact
    from chain.executor import run_chain
    from chain.spec import parse_spec
    from optimum.onnxruntime import ORTModelForSequenceClassification

    model, files = trainer_model
    onnx_dir = tmp_path / "onnx"
    ORTModelForSequenceClassification.from_pretrained(model, export=True).save_pretrained(onnx_dir)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(model).save_pretrained(onnx_dir)
    assert Artifact.load(onnx_dir).format == "onnx"
    spec = parse_spec({"name": "t", "model": str(onnx_dir), "eval": {"threads": 1}, "tasks": {"c": {
        "files": {k: str(v) for k, v in files.items()}, "text_column": "text", "label_column": "sentiment"}},
        "stages": [{"name": "model", "type": "use_model", "task": "c"},
                   {"name": "q", "type": "quantize_onnx_int8", "parent": "model"}]})
    rows = {r["name"]: r for r in run_chain(spec, tmp_path / "o", log=lambda m: None)["stages"]}
    assert rows["model"]["status"] == "ok" and rows["model"]["format"] == "onnx" and rows["model"]["accuracy"] >= 0.9
    assert rows["q"]["status"] == "ok", rows["q"]["reason"]


def test_a_two_label_model_with_transformers_default_labels_is_taken(tiny_bert_dir, tmp_path):
    """save_pretrained leaves id2label and num_labels out of config.json at the default 2 labels:
    that is a 2-label model, not one with 'None labels'."""
    import json

    from chain.link import UseModel
    from tests.stage_runner import run_stages

    cfg = json.loads((tiny_bert_dir / "config.json").read_text())
    assert "id2label" not in cfg and "num_labels" not in cfg
    [r] = run_stages(tiny_bert_dir, [UseModel(parent="source")], tmp_path / "out")
    assert r.status == "ok", r.reason
    assert r.artifact.manifest["num_labels"] == 2

"""The sensitivity report and its command line on the tiny BERT (32 dev sentences, ~30 evaluations)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from torch import nn

from chain.artifact import write_manifest
from chain.errors import SpecError
from chain.task import Task
from compress.sensitivity_report import main, markdown, sensitivity_report, write_report

from tests.conftest import REPO, SST2, save_tiny_bert, write_tsv

SENSITIVE = "bert.encoder.layer.1.intermediate.dense"
# 2 layers x (query, key, value, attention.output, intermediate, output) + the pooler; classifier skipped
LINEARS = {f"bert.encoder.layer.{i}.{n}" for i in (0, 1) for n in (
    "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
    "intermediate.dense", "output.dense")} | {"bert.pooler.dense"}


def _sst2_slice(path, split: str, n: int):
    path.write_text("\n".join((SST2 / f"{split}.tsv").read_text().splitlines()[: n + 1]) + "\n")
    return str(path)


def _center_classifier(path, texts: list[str]) -> None:
    """Random init predicts one class for every sentence (accuracy never moves); shift the
    bias by the median logit margin so half the sentences sit on each side, near the boundary."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    model, tok = BertForSequenceClassification.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        logits = model(**tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")).logits
        model.classifier.bias[1] -= (logits[:, 1] - logits[:, 0]).median()  # logits: (32, 2)
    model.save_pretrained(path, safe_serialization=True)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """The tiny BERT as a fine-tune artifact whose manifest names a 32-sentence dev split."""
    root = tmp_path_factory.mktemp("sens")
    model = save_tiny_bert(root / "ft")
    task = Task("small", {s: _sst2_slice(root / f"{s}.tsv", s, n) for s, n in (("train", 8), ("dev", 32))}, 2)
    _center_classifier(model, task.load("dev").texts)
    write_manifest(model, stage="ft", format="hf", task=task.to_dict(), num_labels=2)
    return model


@pytest.fixture(scope="module")
def report(tuned):
    return sensitivity_report(tuned)


def test_every_linear_once_per_scheme_sorted_by_drop(report):
    assert report["task"] == "small" and report["task_source"] == "manifest"
    assert report["split"] == "dev" and report["examples"] == 32 and report["stage"] == "ft"
    assert 0 <= report["fp32_accuracy"] <= 1
    assert list(report["schemes"]) == ["int8", "int4"]
    assert report["evaluations"] == 1 + 2 * (len(LINEARS) + 1)  # fp32 once; per scheme L + all layers
    for scheme, res in report["schemes"].items():
        names = [r["layer"] for r in res["layers"]]
        assert len(names) == len(set(names)) and set(names) == LINEARS, scheme
        drops = [r["drop_points"] for r in res["layers"]]
        assert drops == sorted(drops, reverse=True)
        assert any(drops), f"{scheme}: every drop is 0, the ordering was not exercised"  # 3.125 / example
        for r in res["layers"]:
            assert r["drop_points"] == pytest.approx(100 * (report["fp32_accuracy"] - r["accuracy"]), abs=1e-3)
        total = res["all_layers"]
        assert total["layers"] == len(LINEARS)
        assert total["drop_points"] == pytest.approx(100 * (report["fp32_accuracy"] - total["accuracy"]), abs=1e-3)
    assert report["schemes"]["int4"]["config"]["group_size"] == 32


def test_known_costs_give_exact_points_and_order(tuned, monkeypatch):
    """A metric with known per-layer costs: SENSITIVE costs 50 points, every other Linear 0.1."""
    import compress.sensitivity as sensitivity

    def synthetic(model) -> float:
        quantized = [n for n, m in model.named_modules()  # dynamic int8's class is also called Linear
                     if type(m).__name__ in ("Linear", "WeightOnlyInt4Linear") and type(m) is not nn.Linear]
        return 1.0 - sum(0.5 if n == SENSITIVE else 0.001 for n in quantized)

    monkeypatch.setattr(sensitivity, "accuracy_fn", lambda *a, **k: synthetic)
    rep = sensitivity_report(tuned, schemes=("int4",), eval_samples=4)
    rows = rep["schemes"]["int4"]["layers"]
    assert rep["fp32_accuracy"] == 1.0 and rep["examples"] == 4 and list(rep["schemes"]) == ["int4"]
    assert rows[0] == {"layer": SENSITIVE, "accuracy": 0.5, "drop_points": 50.0}
    assert all(r["drop_points"] == pytest.approx(0.1) for r in rows[1:])
    # all 13 at once: 50 + 12 x 0.1; and the fp32 modules were put back after it
    assert rep["schemes"]["int4"]["all_layers"] == {"layers": 13, "accuracy": pytest.approx(0.488),
                                                    "drop_points": pytest.approx(51.2)}


def test_json_and_markdown_written(report, tmp_path):
    text = write_report(report, tmp_path / "out", top=3)
    saved = json.loads((tmp_path / "out" / "sensitivity.json").read_text())
    assert saved["schemes"]["int8"]["layers"] == report["schemes"]["int8"]["layers"]
    assert (tmp_path / "out" / "sensitivity.md").read_text() == text
    for part in (report["model"], "task `small`", "split `dev`", "32 examples", report["created"],
                 "## int8", "## int4", "Top 3 of 13", "**all 13 layers**"):
        assert part in text, part
    int8_table = text.split("## int8")[1].split("## int4")[0]
    assert sum(line.startswith("| 1 |") or line.startswith("| 2 |") or line.startswith("| 3 |")
               for line in int8_table.splitlines()) == 3 and "| 4 |" not in int8_table
    assert text.count("all 13 layers") == 2 and markdown(report).count("Top 10 of 13") == 2


def test_task_from_argument_when_manifest_has_none(tiny_bert_dir, tmp_path):
    dev = write_tsv(tmp_path / "dev.tsv", [(i % 2, f"sentence number {i} is fine") for i in range(8)])
    rep = sensitivity_report(tiny_bert_dir, schemes=("int8",), task=Task("mine", {"dev": str(dev)}, 2))
    assert rep["task"] == "mine" and rep["task_source"] == "argument" and rep["examples"] == 8
    rep = sensitivity_report(tiny_bert_dir, schemes=("int8",), task="sst2", eval_samples=4)
    assert rep["task"] == "sst2" and rep["examples"] == 4
    with pytest.raises(SpecError, match="records no task"):
        sensitivity_report(tiny_bert_dir)


def test_cli_writes_files_and_prints_markdown(tuned, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main([str(tuned), "--schemes", "int8", "--eval-samples", "16", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "## int8" in printed and "## int4" not in printed and "**all 13 layers**" in printed
    assert (out / "sensitivity.md").read_text().strip() == printed.strip()
    assert json.loads((out / "sensitivity.json").read_text())["examples"] == 16


@pytest.fixture
def not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


@pytest.fixture
def int8_artifact(tiny_bert_dir, tmp_path):
    d = shutil.copytree(tiny_bert_dir, tmp_path / "int8")
    write_manifest(d, stage="int8", format="torch-int8")
    return d


@pytest.mark.parametrize("case,args,expected", [
    ("missing", ["{tmp}/nope"], "is not a directory"),
    ("not a model", ["{empty}"], "has no config.json"),
    ("quantized", ["{int8}"], "holds a torch-int8 model"),
    ("scheme", ["{tuned}", "--schemes", "int8", "int3"], "unknown scheme(s) ['int3']"),
    ("bad split", ["{tuned}", "--split", "validation"], "unknown split 'validation'"),
    ("no task", ["{tiny}"], "records no task"),
    ("labels", ["{tiny}", "--task", "sst5", "--eval-samples", "2"], "has 2 outputs but task 'sst5' has 5"),
    ("samples", ["{tuned}", "--eval-samples", "0"], "eval_samples must be a positive integer"),
    ("top", ["{tuned}", "--top", "0"], "top must be a positive"),
])
def test_cli_bad_input_is_one_line_exit_2(case, args, expected, tuned, tiny_bert_dir, not_a_model, int8_artifact,
                                          tmp_path, capsys):
    paths = {"tmp": tmp_path, "empty": not_a_model, "int8": int8_artifact, "tuned": tuned, "tiny": tiny_bert_dir}
    argv = [a.format(**paths) for a in args] + ["--output", str(tmp_path / "out")]
    assert main(argv) == 2, case
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "out").exists()


def test_module_entry_point_reports_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "compress.sensitivity_report", str(tmp_path / "nope")],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("error: model path") and p.stderr.count("\n") == 1, p.stderr

"""A reference that answers one class for every input is flagged: its accuracy measures no model."""
from types import SimpleNamespace

import numpy as np
import torch

from bench.report import write_reports
from bench.run import one_class_reference
from chain.artifact import Artifact
from chain.evaluate import EvalConfig, Evaluator
from chain.predict import scores
from chain.task import builtin_task


def test_scores_count_the_classes_predicted():
    batches = [([0, 1], None), ([2, 3], None)]
    const = scores(lambda enc: np.array([[2.0, 0.0], [3.0, 1.0]]), batches, [0, 1, 0, 0])
    assert const == {"accuracy": 0.75, "predicted_classes": 1}
    both = scores(lambda enc: np.array([[2.0, 0.0], [0.0, 1.0]]), batches, [0, 1, 0, 1])
    assert both == {"accuracy": 1.0, "predicted_classes": 2}


def test_evaluator_sees_a_head_biased_to_one_class(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    with torch.no_grad():
        model.classifier.bias[:] = torch.tensor([50.0, -50.0])
    model.save_pretrained(tiny_bert)
    art = Artifact(tiny_bert, {"stage": "ref", "format": "hf", "parent": None, "complete": True,
                               "task": {"name": "sst2"}})
    res = Evaluator(EvalConfig(max_samples=24), {"sst2": builtin_task("sst2")}).accuracy(art, ["sst2"])["sst2"]
    assert res["predicted_classes"] == 1 and res["examples"] == 24


def _run(predicted_classes: int, num_labels: int = 2):
    ev = SimpleNamespace(accuracy=lambda art, tasks: {"mine": {"accuracy": 0.5123, "predicted_classes": predicted_classes}})
    spec = SimpleNamespace(tasks={"mine": SimpleNamespace(num_labels=num_labels)}, eval=SimpleNamespace(split="test"))
    return SimpleNamespace(evaluator=ev, spec=spec)


def test_bench_warns_only_for_a_one_class_reference(tiny_bert_dir, tmp_path):
    rows = [{"name": "finetune", "artifact": str(tiny_bert_dir)}, {"name": "int8", "artifact": str(tiny_bert_dir)}]
    got = one_class_reference(rows, "finetune", "mine", _run(1))
    assert "`finetune` predicts one class for every test example of mine" in got and "0.5123" in got
    assert one_class_reference(rows, "finetune", "mine", _run(2)) is None
    assert one_class_reference(rows, "finetune", None, _run(1)) is None
    assert one_class_reference([{"name": "finetune", "artifact": None}], "finetune", "mine", _run(1)) is None
    results = {"task": "mine", "reference": "finetune", "warnings": [got], "measure": {}, "stages": [],
               "environment": {"versions": {}}}
    write_reports(results, tmp_path, plots=False)
    assert f"**Warning:** {got}." in (tmp_path / "report.md").read_text()

"""A stage that cannot run on this machine (``kernels`` without CUDA) is reported as skipped."""
from __future__ import annotations

import pytest
import torch

from chain.__main__ import main
from tests.chain.conftest import make_spec


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the kernels stage runs")
def test_kernels_stage_skipped_with_reason_and_exit_0(tmp_path, tiny_bert_dir, easy_tasks, capsys):
    stages = [{"name": "a", "type": "finetune", "task": "senti"}, {"name": "k", "type": "kernels", "parent": "a"},
              {"name": "after", "type": "quantize_int8", "parent": "k"}]
    spec = make_spec(tmp_path / "s.yaml", tiny_bert_dir, easy_tasks, stages)
    assert main(["run", str(spec), "--output", str(tmp_path / "out"), "--quiet"]) == 0
    import json

    res = json.loads((tmp_path / "out" / "results.json").read_text())
    a, k, after = res["stages"]
    assert a["status"] == "ok" and k["status"] == "skipped" and "CUDA" in k["reason"]
    assert k["accuracy"] is None and not k["accuracy_by_task"]  # nothing was evaluated or gated as if it had run
    assert after["status"] == "skipped" and "'k' did not produce a model" in after["reason"]
    # a skipped stage is not a cache hit: a run resumed on a machine with a GPU must run it
    assert main(["run", str(spec), "--output", str(tmp_path / "out"), "--quiet"]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [s["status"] for s in res["stages"]] == ["cached", "skipped", "skipped"]
    assert res["stages"][1]["cached"] is False

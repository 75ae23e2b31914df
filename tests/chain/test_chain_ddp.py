"""The fine-tune stage under DDP: 2 CPU processes (gloo) through torchrun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from chain.artifact import Artifact
from chain.executor import run_chain
from chain.spec import load_spec
from tests.chain.conftest import FAST_FT, make_spec

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_process_stage_in_a_chain(tmp_path, tiny_bert_dir, easy_tasks):
    # per-process batch 8 x 2 processes = the one-process global batch of 16
    stages = [{"name": "a", "type": "finetune", "task": "senti", "config": {"processes": 2, "batch_size": 8}},
              {"name": "q", "type": "quantize_int8"}]
    res = run_chain(load_spec(make_spec(tmp_path / "s.yaml", tiny_bert_dir, easy_tasks, stages)), tmp_path / "out",
                    log=lambda _: None)
    a = res["stages"][0]
    assert [s["status"] for s in res["stages"]] == ["ok", "ok"], a.get("reason")
    assert a["train"]["processes"] == 2 and a["train"]["steps"] == 64  # 128 examples / 16 x 8 epochs
    assert a["accuracy_by_task"]["senti"] >= 0.9
    art = Artifact.load(a["artifact"])
    assert not list(art.path.glob("_ddp_*")) and (art.path / "heads" / "senti.safetensors").is_file()


@pytest.mark.slow
def test_torchrun_finetune_command(tmp_path, tiny_bert_dir, easy_tasks):
    cfg = {**FAST_FT, "batch_size": 8, "task": {"name": "senti", "num_labels": 2, **easy_tasks["senti"]}}
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "ft"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "chain",
           "finetune", "--parent", str(tiny_bert_dir), "--config", str(tmp_path / "ft.yaml"), "--output", str(out)]
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and m["train"]["processes"] == 2 and m["train"]["dev_accuracy"] >= 0.9
    assert "classifier.weight" in load_file(str(out / "model.safetensors"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]

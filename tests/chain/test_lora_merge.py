"""LoRA task vectors on a shared base (chain.lora_merge): the merge math against peft's
definitions by hand, and a two-stage chain whose artifact is base + both tasks' deltas."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chain import lora_merge
from chain.errors import SpecError
from chain.executor import run_chain
from chain.finetune_config import LoraSettings
from chain.spec import load_spec
from tests.chain.conftest import make_spec


def _vec(seed: int, fifo: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"layer.q": (torch.randn(2, 6, generator=g), torch.randn(4, 2, generator=g), fifo)}


def test_task_arithmetic_is_the_weighted_sum_of_full_deltas():
    v1, v2 = _vec(1), _vec(2)
    out = lora_merge.merge({"a": v1, "b": v2}, "task_arithmetic", 1.0, 0.5, seed=0)
    want = 0.5 * (v1["layer.q"][1] @ v1["layer.q"][0] + v2["layer.q"][1] @ v2["layer.q"][0])
    torch.testing.assert_close(out["layer.q"], want)


def test_fan_in_fan_out_delta_is_transposed():
    v = _vec(3, fifo=True)
    out = lora_merge.merge({"a": v}, "task_arithmetic", 1.0, 1.0, seed=0)
    assert out["layer.q"].shape == (6, 4)
    torch.testing.assert_close(out["layer.q"], (v["layer.q"][1] @ v["layer.q"][0]).T)


def test_ties_elects_one_sign_and_prunes_to_density():
    a, b = _vec(4), _vec(5)
    da, db = (v["layer.q"][1] @ v["layer.q"][0] for v in (a, b))
    out = lora_merge.merge({"a": a, "b": b}, "ties", 1.0, 1.0, seed=0)["layer.q"]
    # density 1: every entry kept; the elected sign is the sign of the sum; only agreeing entries are averaged
    sign = torch.sign(da + db)
    keep_a, keep_b = (torch.sign(da) == sign).float(), (torch.sign(db) == sign).float()
    want = (da * keep_a + db * keep_b) / (keep_a + keep_b).clamp(min=1)
    torch.testing.assert_close(out, want)
    half = lora_merge.merge({"a": a}, "ties", 0.5, 1.0, seed=0)["layer.q"]
    assert (half != 0).sum().item() == da.numel() // 2  # the largest half of one vector survives


def test_dare_masks_follow_the_seed():
    vs = {"a": _vec(6), "b": _vec(7)}
    one = lora_merge.merge(vs, "dare_ties", 0.5, 1.0, seed=1)["layer.q"]
    assert torch.equal(one, lora_merge.merge(vs, "dare_ties", 0.5, 1.0, seed=1)["layer.q"])
    assert not torch.equal(one, lora_merge.merge(vs, "dare_ties", 0.5, 1.0, seed=2)["layer.q"])


@pytest.mark.parametrize("bad, msg", [({"merge": "mean"}, "lora.merge must be one of"),
                                      ({"merge": "ties", "density": 1.5}, "density must be in (0, 1]"),
                                      ({"merge": "ties", "weight": 0}, "weight must be a number > 0")])
def test_bad_merge_settings_are_spec_errors(bad, msg):
    with pytest.raises(SpecError, match=msg.replace("(", r"\(").replace("]", r"\]")):
        LoraSettings(**bad)


def test_chain_of_merged_lora_stages_is_base_plus_every_task_vector(tmp_path, tiny_bert_dir, easy_tasks):
    lora = {"r": 4, "alpha": 8, "target_modules": ["query", "value"], "merge": "task_arithmetic"}
    cfg = {"lora": lora, "learning_rate": 2e-2, "epochs": 8}
    stages = [{"name": "s", "type": "finetune", "task": "senti", "config": cfg},
              {"name": "t", "type": "finetune", "task": "topic", "config": cfg, "gate": {"max_drop": 0.6}}]
    res = run_chain(load_spec(make_spec(tmp_path / "m.yaml", tiny_bert_dir, easy_tasks, stages)), tmp_path / "out")
    st = {s["name"]: s for s in res["stages"]}
    assert [s["status"] for s in res["stages"]] == ["ok", "ok"], [s.get("reason") for s in res["stages"]]
    s_dir, t_dir = Path(st["s"]["artifact"]), Path(st["t"]["artifact"])
    info = json.loads((t_dir / lora_merge.DIR / "merge.json").read_text())
    assert info["tasks"] == ["senti", "topic"] and info["method"] == "task_arithmetic"
    assert st["t"]["train"]["lora_merge"]["tasks"] == ["senti", "topic"]
    base = load_file(str(tiny_bert_dir / "model.safetensors"))
    stored = load_file(str(t_dir / lora_merge.DIR / "base.safetensors"))
    q = "encoder.layer.0.attention.self.query.weight"
    key = next(k for k in stored if k.endswith(q))
    torch.testing.assert_close(stored[key], base[key])  # the shared base is the pretrained model, not stage s
    # stage s's vector is carried into t unchanged, and t's weights are base + both deltas
    vs, vt = lora_merge.read_vectors(s_dir), lora_merge.read_vectors(t_dir)
    name = key[: -len(".weight")]
    for x, y in zip(vs["senti"][name][:2], vt["senti"][name][:2]):
        assert torch.equal(x, y)
    after = load_file(str(t_dir / "model.safetensors"))
    delta = sum(b @ a for a, b, _ in (vt["senti"][name], vt["topic"][name]))
    torch.testing.assert_close(after[key], base[key] + delta, atol=1e-5, rtol=1e-5)
    k = key.replace("query", "key")
    assert torch.equal(after[k], base[k])  # untargeted weights stay the base's
    assert st["t"]["accuracy_by_task"]["topic"] > 0.5 and st["t"]["accuracy_by_task"]["senti"] > 0.8


def test_a_base_that_no_longer_fits_the_model_is_a_spec_error(tmp_path, tiny_bert_dir):
    from safetensors.torch import save_file
    from transformers import AutoModelForSequenceClassification

    (tmp_path / lora_merge.DIR).mkdir()
    key = "bert.encoder.layer.0.attention.self.query.weight"
    save_file({key: torch.zeros(8, 8)}, str(tmp_path / lora_merge.DIR / "base.safetensors"))
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    with pytest.raises(SpecError, match="before pruning"):
        lora_merge.restore_base_(model, tmp_path)

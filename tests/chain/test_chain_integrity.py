"""A cached artifact is reused only if every file is as it was written; anything else is
recomputed with a warning naming the file (truncated, byte-flipped or deleted weights, an
edited metric, a truncated or binary manifest), including a damaged parent under --force."""
import json
from pathlib import Path

import pytest

from chain.executor import run_chain
from chain.spec import parse_spec

STAGES = [{"name": "onnx", "type": "export_onnx", "task": "sst2"},
          {"name": "q", "type": "quantize_onnx_int8", "parent": "onnx"}]


def _run(model, out, force=None):
    spec = parse_spec({"name": "t", "model": str(model), "eval": {"max_samples": 32, "threads": 1},
                       "stages": STAGES})
    lines = []
    res = run_chain(spec, out, force=force, log=lines.append)
    return {r["name"]: r for r in res["stages"]}, "\n".join(lines)


@pytest.fixture(scope="module")
def first(tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("integrity") / "out"
    rows, _ = _run(tiny_bert_dir, out)
    assert all(r["status"] == "ok" for r in rows.values()), rows
    return out, rows


def _fresh(first, tmp_path):
    import shutil

    out, rows = first
    dst = tmp_path / "out"
    shutil.copytree(out, dst)
    return dst, {n: dst / "artifacts" / Path(r["artifact"]).name for n, r in rows.items()}


def truncate(p: Path):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def flip(p: Path):
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def edit_metric(p: Path):
    m = json.loads(p.read_text())
    m["evaluations"]["sst2"]["accuracy"] = 0.999
    p.write_text(json.dumps(m))


@pytest.mark.parametrize("target,damage,expect", [
    ("model.onnx", truncate, "bytes"),
    ("model.onnx", flip, "checksum"),
    ("model.onnx", Path.unlink, "missing"),
    ("manifest.json", edit_metric, "edited"),
    ("manifest.json", truncate, "truncated or not JSON"),
    ("manifest.json", lambda p: p.write_bytes(b"\x00\xff\xfe" * 50), "truncated or not JSON"),
])
def test_damaged_cache_is_recomputed(tiny_bert_dir, first, tmp_path, target, damage, expect):
    out, dirs = _fresh(first, tmp_path)
    damage(dirs["q"] / target)
    rows, log = _run(tiny_bert_dir, out)
    assert rows["onnx"]["status"] == "cached"
    assert rows["q"]["status"] == "ok", rows["q"]  # recomputed, not reused
    assert "warning: stage q" in log and expect in log and str(dirs["q"] / target) in log
    assert rows["q"]["accuracy"] == first[1]["q"]["accuracy"]  # the real metric, not the edited one


def test_force_on_child_rebuilds_a_damaged_parent(tiny_bert_dir, first, tmp_path):
    out, dirs = _fresh(first, tmp_path)
    flip(dirs["onnx"] / "model.onnx")
    rows, log = _run(tiny_bert_dir, out, force="q")
    assert rows["onnx"]["status"] == "ok" and rows["q"]["status"] == "ok"
    assert "warning: stage onnx" in log


def test_intact_cache_is_reused_silently(tiny_bert_dir, first, tmp_path):
    out, _ = _fresh(first, tmp_path)
    rows, log = _run(tiny_bert_dir, out)
    assert [r["status"] for r in rows.values()] == ["cached", "cached"] and "warning" not in log

"""The executor on stages that only touch files: order, parents, failures, skips, exit codes."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

from chain.artifact import Artifact
from chain.errors import DataError, SpecError
from chain.executor import exit_code, run_chain
from chain.registry import register_stage
from chain.spec import parse_spec
from chain.stage import RunContext, Stage
from tests.conftest import save_tiny_bert


@dataclass
class TouchConfig:
    fail: bool = False
    hardware: bool = True


@register_stage("test_touch")
@dataclass
class Touch(Stage):
    """Writes which parent it came from; fails or skips on request."""
    config: TouchConfig = field(default_factory=TouchConfig)
    name: str = "touch"
    parent: str | None = None
    runs: ClassVar[list] = []

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext) -> dict:
        Touch.runs.append(self.name)
        if self.config.fail:
            raise DataError(f"{self.name} broke")
        (out_dir / "from.txt").write_text(str(parent.path))
        return {"format": "hf", **({} if self.config.hardware else {"skip_reason": "needs a GPU"})}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("m") / "bert")


def _run(model, tmp_path, stages):
    spec = parse_spec({"name": "t", "model": str(model), "stages": stages})
    return run_chain(spec, tmp_path / "out", log=lambda m: None)


def test_order_parents_and_artifacts(model, tmp_path):
    res = _run(model, tmp_path, [{"name": "a", "type": "test_touch"}, {"name": "b", "type": "test_touch"},
                                 {"name": "c", "type": "test_touch", "parent": "a"}])
    rows = {r["name"]: r for r in res["stages"]}
    assert [r["status"] for r in res["stages"]] == ["ok"] * 3 and exit_code(res) == 0
    assert (Path(rows["c"]["artifact"]) / "from.txt").read_text() == rows["a"]["artifact"]
    assert Artifact.load(rows["c"]["artifact"]).manifest["parent_stage"] == "a"
    assert len({tuple(sorted(r)) for r in res["stages"]}) == 1  # every row has the same keys


def test_failure_is_recorded_and_independent_stages_go_on(model, tmp_path):
    res = _run(model, tmp_path, [{"name": "a", "type": "test_touch"},
                                 {"name": "b", "type": "test_touch", "config": {"fail": True}},
                                 {"name": "c", "type": "test_touch"}, {"name": "d", "type": "test_touch", "parent": "a"}])
    assert [(r["name"], r["status"]) for r in res["stages"]] == [("a", "ok"), ("b", "failed"), ("c", "skipped"),
                                                                ("d", "ok")]
    assert "b broke" in res["stages"][1]["reason"] and "'b'" in res["stages"][2]["reason"]
    assert exit_code(res) == 1
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "out" / "artifacts").iterdir())


def test_skipped_for_hardware_is_exit_0_and_retried_next_run(model, tmp_path):
    stages = [{"name": "a", "type": "test_touch", "config": {"hardware": False}}]
    res = _run(model, tmp_path, stages)
    assert res["stages"][0]["status"] == "skipped" and "GPU" in res["stages"][0]["reason"] and exit_code(res) == 0
    Touch.runs.clear()
    _run(model, tmp_path, stages)
    assert Touch.runs == ["a"]  # not a cache hit: the next machine may have the hardware


def test_cached_on_second_run(model, tmp_path):
    stages = [{"name": "a", "type": "test_touch"}, {"name": "b", "type": "test_touch"}]
    _run(model, tmp_path, stages)
    Touch.runs.clear()
    res = _run(model, tmp_path, stages)
    assert [r["status"] for r in res["stages"]] == ["cached", "cached"] and Touch.runs == []


@pytest.mark.parametrize("stages,msg", [
    ([{"name": "a", "type": "test_touch"}, {"name": "a", "type": "test_touch"}], "used twice"),
    ([{"name": "a", "type": "test_touch", "parent": "z"}], "not an earlier stage"),
    ([{"name": "../x", "type": "test_touch"}], "give a name of letters"),
    ([{"name": "a", "type": "no_such_type"}], "unknown stage type"),
])
def test_bad_stage_lists(model, stages, msg):
    with pytest.raises(SpecError, match=msg):
        parse_spec({"name": "t", "model": str(model), "stages": stages})


def test_every_stage_error_at_once(model):
    with pytest.raises(SpecError) as e:
        parse_spec({"name": "t", "model": str(model), "stages": [
            {"name": "a", "type": "nope"}, {"name": "b", "type": "test_touch", "config": {"fail": "yes"}},
            {"name": "c", "type": "test_touch", "parent": "zz"}]})
    assert "3 problems" in str(e.value)
    assert "unknown stage type 'nope'" in str(e.value) and "fail" in str(e.value) and "'zz'" in str(e.value)

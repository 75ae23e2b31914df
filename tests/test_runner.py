from dataclasses import dataclass, field
from pathlib import Path

import pytest

from chain.artifact import Artifact, write_manifest
from chain.errors import DataError, SpecError
from chain.runner import run_stages


@dataclass
class Touch:
    name: str
    parent: str | None = None
    fail: bool = False
    config: dict = field(default_factory=dict)

    def run(self, parent: Artifact, out_dir: Path) -> dict:
        if self.fail:
            raise DataError(f"{self.name} broke")
        (out_dir / "from.txt").write_text(str(parent.path))
        return {"format": "hf"}


@pytest.fixture
def source(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    write_manifest(d, stage="source", format="hf", num_labels=2)
    return Artifact.load(d)


def test_order_parents_metrics(source, tmp_path):
    calls = []
    res = run_stages(source, [Touch("a"), Touch("b"), Touch("c", parent="a")], tmp_path / "out",
                     evaluate=lambda art: calls.append(art.name) or {"accuracy": 0.5})
    assert [r.status for r in res] == ["ok"] * 3 and calls == ["a", "b", "c"]
    c = res[2].artifact
    assert (c.path / "from.txt").read_text() == str(res[0].artifact.path)
    assert Artifact.load(c.path).manifest["metrics"]["accuracy"] == 0.5
    assert c.manifest["parent_stage"] == "a" and c.manifest["num_labels"] == 2


def test_failure_is_recorded_and_independent_stages_go_on(source, tmp_path):
    res = run_stages(source, [Touch("a"), Touch("b", fail=True), Touch("c"), Touch("d", parent="a")],
                     tmp_path / "out")
    assert [(r.name, r.status) for r in res] == [("a", "ok"), ("b", "failed"), ("c", "skipped"), ("d", "ok")]
    assert "b broke" in res[1].reason and "'b'" in res[2].reason
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "out").iterdir())


def test_evaluation_failure_keeps_artifact(source, tmp_path):
    res = run_stages(source, [Touch("a")], tmp_path / "out", evaluate=lambda a: 1 / 0)
    assert res[0].status == "failed" and "ZeroDivisionError" in res[0].reason
    assert res[0].artifact is not None and res[0].artifact.path.is_dir()


@pytest.mark.parametrize("stages,msg", [([Touch("a"), Touch("a")], "used twice"),
                                        ([Touch("a", parent="z")], "not an earlier stage"),
                                        ([Touch("../x")], "not a valid directory name")])
def test_bad_stage_lists(source, tmp_path, stages, msg):
    with pytest.raises(SpecError, match=msg):
        run_stages(source, stages, tmp_path / "out")

import json

import pytest

from chain.artifact import MANIFEST, Artifact, staging_dir, write_manifest
from chain.errors import ModelError


def _publish(dest, marker: str):
    with staging_dir(dest) as tmp:
        (tmp / "w.bin").write_text(marker)
        write_manifest(tmp, stage="s", format="hf", num_labels=2)


def test_publish_and_replace(tmp_path):
    dest = tmp_path / "a"
    _publish(dest, "one")
    _publish(dest, "two")
    assert (dest / "w.bin").read_text() == "two"
    art = Artifact.load(dest)
    assert art.manifest["complete"] and art.manifest["versions"]["torch"]
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temp or old dirs left


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_crash_leaves_nothing(tmp_path, exc):
    dest = tmp_path / "a"
    _publish(dest, "good")
    with pytest.raises(exc):
        with staging_dir(dest) as tmp:
            (tmp / "w.bin").write_text("half")
            raise exc()
    assert (dest / "w.bin").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_stage_without_manifest_is_not_published(tmp_path):
    with pytest.raises(RuntimeError, match="manifest"):
        with staging_dir(tmp_path / "a") as tmp:
            (tmp / "w.bin").write_text("x")
    assert not (tmp_path / "a").exists()


def test_incomplete_manifest_is_refused(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"complete": False}))
    with pytest.raises(ModelError, match="unfinished"):
        Artifact.load(tmp_path)


def test_bad_paths(tmp_path):
    with pytest.raises(ModelError, match="not a directory"):
        Artifact.load(tmp_path / "missing")
    with pytest.raises(ModelError, match="config.json"):
        Artifact.load(tmp_path)

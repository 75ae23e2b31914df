import json

import pytest

from chain.errors import DataError, SpecError
from chain.task import Task, builtin_task
from tests.conftest import write_tsv


def test_builtin_sst2_sizes():
    t = builtin_task("sst2")
    assert [len(t.load(s)) for s in ("train", "dev", "test")] == [6920, 872, 1821]
    assert set(t.load("test").labels) == {0, 1}


def test_subj_holdout_is_disjoint_and_seeded():
    t = builtin_task("subj")
    parts = {s: t.load(s) for s in ("train", "dev", "test")}
    assert [len(parts[s]) for s in ("train", "dev", "test")] == [8000, 1000, 1000]
    texts = [set(p.texts) for p in parts.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2])
    assert builtin_task("subj").load("dev").texts == parts["dev"].texts


def test_unknown_builtin():
    with pytest.raises(SpecError, match="unknown built-in task"):
        builtin_task("imdb")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_csv_and_jsonl(tmp_path, fmt):
    p = tmp_path / f"d.{fmt}"
    if fmt == "csv":
        p.write_text('text,y\n"good, really",1\nbad,0\n')
    else:
        p.write_text(json.dumps({"text": "good, really", "y": 1}) + "\n" + json.dumps({"text": "bad", "y": 0}) + "\n")
    s = Task("t", {"train": str(p)}, 2, "text", "y").load("train")
    assert s.texts == ["good, really", "bad"] and s.labels == [1, 0]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        Task("t", {"train": str(tmp_path / "nope.tsv")}, 2).load("train")


def test_missing_label_column(tmp_path):
    p = write_tsv(tmp_path / "a.tsv", [(1, "x")], header=("y", "sentence"))
    with pytest.raises(DataError, match="no column 'label'.*label_column"):
        Task("t", {"train": str(p)}, 2).load("train")


def test_empty_file(tmp_path):
    p = tmp_path / "e.tsv"
    p.write_text("label\tsentence\n")
    with pytest.raises(DataError, match="no data rows"):
        Task("t", {"train": str(p)}, 2).load("train")


@pytest.mark.parametrize("label,msg", [("pos", "mixes integer ids with names"), ("7", "outside 0..1")])
def test_bad_labels(tmp_path, label, msg):
    p = write_tsv(tmp_path / "a.tsv", [(0, "fine"), (label, "x")])
    with pytest.raises(DataError, match=f"line 3.*{msg}"):
        Task("t", {"train": str(p)}, 2).load("train")


def test_fingerprint_tracks_file_content(tmp_path):
    p = write_tsv(tmp_path / "a.tsv", [(0, "x")])
    t = Task("t", {"train": str(p)}, 2)
    before = t.fingerprint()
    write_tsv(p, [(1, "x")])
    assert t.fingerprint() != before


def test_fingerprint_is_the_content_not_the_location(tmp_path):
    """A moved clone or data folder keeps its cache; a swapped split does not."""
    import shutil

    (tmp_path / "a").mkdir()
    a = write_tsv(tmp_path / "a" / "train.tsv", [(0, "x"), (1, "y")])
    b = write_tsv(tmp_path / "a" / "test.tsv", [(1, "z")])
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    here = Task("t", {"train": str(a), "test": str(b)}, 2)
    moved = Task("t", {"train": str(tmp_path / "moved" / "train.tsv"), "test": str(tmp_path / "moved" / "test.tsv")}, 2)
    assert here.fingerprint() == moved.fingerprint()
    swapped = Task("t", {"train": str(b), "test": str(a)}, 2)
    assert swapped.fingerprint() != here.fingerprint()

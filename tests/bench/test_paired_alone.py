"""Together and alone paired in time (bench/paired_alone.py), on tiny BERT artifacts: machinery, not speed."""
import pytest

from bench.harness import MeasureConfig
from bench.paired_alone import time_paired
from bench.worker import Worker
from chain.artifact import Artifact
from chain.task import builtin_task

SMALL = dict(threads=1, latency_calls=12, throughput_batches=1, throughput_rounds=3, warmup=2)
TEXTS = builtin_task("sst2").load("test").texts[:200]


@pytest.fixture
def arts(chain_dirs):
    by = {a.name: a for a in (Artifact.load(d) for d in chain_dirs)}
    return [by["fp32"], by["onnx-int8"]]


@pytest.fixture
def requests(monkeypatch):
    """Every request a worker gets: (worker handle, op, *args), in order."""
    sent, request = [], Worker.request
    monkeypatch.setattr(Worker, "request", lambda self, *msg: (sent.append((self, *msg)), request(self, *msg))[1])
    return sent


def test_process_mode_alternates_two_sets_of_workers(arts, requests):
    cfg = MeasureConfig(**SMALL)
    got = time_paired(arts, TEXTS, cfg, "process", segment=5)
    names = ["fp32", "onnx-int8"]
    for side in ("together", "alone"):
        for n in names:  # every input timed once per side: 12 batch-1 calls, 3 rounds of 1 batch
            assert len(got["samples_ms"][side][n]["b1"]) == 12 and len(got["samples_ms"][side][n]["b32"]) == 3
            assert got["figures"][side][n]["p50_ms"] > 0 and got["figures"][side][n]["samples_per_s"] > 0
    runs = [(w, args) for w, op, *args in requests if op == "run"]
    workers = list(dict.fromkeys(w for w, _ in runs))
    assert len(workers) == 4 and len({w.proc.pid for w in workers}) == 4  # two processes per model
    alone = workers[:2]  # the alone pool starts first
    assert sorted(w.name for w in alone) == names
    for w in alone:  # one untimed call, then the segment's inputs back to back
        b1 = [idx for wk, (kind, idx) in runs if wk is w and kind == "b1"]
        assert b1 == [[0, 0, 1], [0, 0, 1, 2, 3, 4], [5, 5, 6, 7, 8, 9], [10, 10, 11]]
    # the sides alternate: the together workers' b1 inputs of a segment are timed between the
    # alone runs of the segment before and after it (never all together, then all alone)
    order = [("alone" if w in alone else "together", idx[-1] // 5) for w, (kind, idx) in runs if kind == "b1"]
    segs = [s for s in dict.fromkeys(order) if s[1] >= 0]
    assert [s for _, s in segs] == sorted(s for _, s in segs)
    assert {side for side, _ in segs} == {"alone", "together"} and len(segs) >= 6


def test_inprocess_mode_times_this_process_against_alone_workers(arts, requests):
    got = time_paired(arts, TEXTS, MeasureConfig(**SMALL), "inprocess", segment=4)
    assert got["mode"] == "inprocess"
    assert all(len(got["samples_ms"]["together"][n]["b1"]) == 12 for n in ("fp32", "onnx-int8"))
    assert len({w.proc.pid for w, *_ in requests}) == 2  # only the alone workers are processes


def test_rejects_a_bad_segment(arts):
    with pytest.raises(ValueError, match="segment"):
        time_paired(arts, TEXTS, MeasureConfig(**SMALL), "process", segment=0)

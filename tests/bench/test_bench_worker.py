"""Worker-process timing (bench/worker.py) on tiny BERT artifacts of every runtime bench times.

Machinery, not speed: schema, pairing, per-worker memory, and that a worker that fails,
crashes, hangs or is interrupted ends as a failed row or a clean exit, never a hang or an
orphan process. No timed assertions.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.harness import MeasureConfig, measure_speed
from bench.worker import Worker, WorkerPool
from chain.artifact import Artifact
from chain.task import builtin_task
from tests.conftest import REPO

SMALL = dict(threads=1, latency_calls=12, throughput_batches=1, throughput_rounds=2, warmup=2)
TEXTS = builtin_task("sst2").load("test").texts[:200]


@pytest.fixture
def arts(chain_dirs):
    return [Artifact.load(d) for d in chain_dirs]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def started(monkeypatch):
    """Every Worker the test starts, to check none is left running."""
    workers = []
    init = Worker.__init__

    def record(self, *a, **k):
        init(self, *a, **k)
        workers.append(self)

    monkeypatch.setattr(Worker, "__init__", record)
    return workers


def test_one_worker_per_model_same_schema_paired_ci(arts, started):
    rows = measure_speed(arts, TEXTS, MeasureConfig(**SMALL), reference="fp32")
    assert list(rows) == ["fp32", "int8", "onnx", "onnx-int8"]
    assert {n: r["backend"] for n, r in rows.items()} == {"fp32": "pytorch", "int8": "pytorch",
                                                         "onnx": "onnxruntime", "onnx-int8": "onnxruntime"}
    pids = {r["timing"]["worker_pid"] for r in rows.values()}
    assert len(pids) == 4 and os.getpid() not in pids
    for r in rows.values():
        assert {"latency_ms", "throughput", "speedup", "speedup_ci95", "memory_mb", "samples_ms", "backend",
                "threads", "timing"} <= set(r)
        assert r["timing"]["mode"] == "process" and r["timing"]["omp_wait_policy"]
        assert r["timing"]["ort_spinning"] == (r["backend"] == "onnxruntime")  # alone in its process: ORT's default
        assert len(r["samples_ms"]["latency"]) == 12 and len(r["samples_ms"]["throughput"]) == 2
        for k, (lo, hi) in r["speedup_ci95"].items():
            assert lo <= r["speedup"][k] <= hi, k
        assert r["memory_mb"]["peak_rss"] > r["memory_mb"]["load_rss"] > 0
        assert r["load_s"] > 0 and r["first_call_ms"] > 0 and r["threads"]["torch_intra_op"] == 1
        assert r["threads"]["torch_inter_op"] == 1  # --threads 1 means 1, not the core count
    assert rows["fp32"]["speedup"] == {"throughput": 1.0, "latency_p50": 1.0, "latency_tmean": 1.0}
    # each worker's own memory, not one process figure repeated on every row
    assert len({r["memory_mb"]["load_rss"] for r in rows.values()}) == 4
    assert len(started) == 4 and all(w.proc.poll() is not None for w in started)
    assert all(_gone(p) for p in pids)


def test_inprocess_mode_keeps_the_schema(arts):
    rows = measure_speed(arts[::3], TEXTS, MeasureConfig(**SMALL, isolation="inprocess"), reference="fp32")
    assert list(rows) == ["fp32", "onnx-int8"]
    for r in rows.values():
        assert r["timing"]["mode"] == "inprocess" and "worker_pid" not in r["timing"]
        assert r["timing"]["ort_spinning"] is False  # spinning threads would slow the other models
        assert r["memory_mb"]["process_peak_rss"] > 0 and len(r["samples_ms"]["latency"]) == 12
        lo, hi = r["speedup_ci95"]["latency_p50"]
        assert lo <= r["speedup"]["latency_p50"] <= hi


def test_pool_rotation_in_blocks(chain_dirs, started, monkeypatch):
    """Two workers (the same model under two names), 5 calls per turn after 1 untimed one:
    every input timed once each."""
    from bench.harness import timing_inputs
    from bench.worker import WorkerPool
    from chain.model import load_tokenizer

    sent, request = [], Worker.request
    monkeypatch.setattr(Worker, "request", lambda self, *msg: (sent.append((self.name, *msg)), request(self, *msg))[1])
    b1, _ = timing_inputs(load_tokenizer(Artifact.load(chain_dirs[0])), TEXTS, MeasureConfig(**SMALL))
    with WorkerPool({"a": chain_dirs[0], "b": chain_dirs[0]}, threads=1) as pool:
        pool.send_inputs("b1", b1)
        t = pool.time_rotation("b1", n_calls=11, warmup=1, block=5, turn_warmup=1)
        assert pool.failed == {} and set(t.samples_ms) == {"a", "b"}
    assert all(len(t.samples_ms[n]) == 11 for n in "ab")
    runs = [(n, idx) for n, op, *rest in sent if op == "run" for idx in rest[1:]]
    a_runs = [idx for n, idx in runs if n == "a"]
    # the first call, then per turn one request: the untimed call and the timed ones, back to back
    assert a_runs == [[0], [0, 0, 1, 2, 3, 4], [5, 5, 6, 7, 8, 9], [10, 10]]
    r = t.ratio("a", "b")
    assert r.ci95[0] <= r.value <= r.ci95[1]
    assert all(w.info.first_call_ms["b1"] > 0 and w.info.peak_rss_mb > 0 for w in started)
    assert all(w.proc.poll() is not None for w in started)


def test_config_is_validated():
    with pytest.raises(ValueError, match="isolation"):
        MeasureConfig(isolation="thread")
    with pytest.raises(ValueError, match="latency_block"):
        MeasureConfig(latency_block=0)
    with pytest.raises(ValueError, match="throughput_block"):
        MeasureConfig(throughput_block=0)
    with pytest.raises(ValueError, match="turn warm-ups"):
        MeasureConfig(throughput_turn_warmup=-1)
    with pytest.raises(ValueError, match="worker_timeout_s"):
        MeasureConfig(worker_timeout_s=0)


def test_crashed_worker_is_a_failed_row_with_the_reason(arts, started, monkeypatch):
    request = Worker.request
    runs = {"n": 0}

    def crash_onnx(self, *msg):
        if self.name == "onnx" and msg[0] == "run":
            runs["n"] += 1
            if runs["n"] == 3:  # mid-rotation: after warm-up, during the timed batch-1 rounds
                os.kill(self.proc.pid, signal.SIGKILL)
        return request(self, *msg)

    monkeypatch.setattr(Worker, "request", crash_onnx)
    rows = measure_speed(arts[0::2], TEXTS, MeasureConfig(**SMALL), reference="fp32")
    assert rows["onnx"]["status"] == "failed" and "SIGKILL" in rows["onnx"]["reason"], rows["onnx"]
    assert "latency_ms" not in rows["onnx"]
    for n in ("fp32",):  # the other was timed to the end
        assert "status" not in rows[n] and len(rows[n]["samples_ms"]["latency"]) == 12 and rows[n]["speedup"]
    assert len(started) == 2 and all(w.proc.poll() is not None for w in started)


def test_silent_worker_is_killed_after_the_timeout(arts, started, monkeypatch):
    request = Worker.request

    def freeze(self, *msg):
        if self.name == "onnx-int8" and msg[0] == "run":
            self.timeout_s = 2  # MeasureConfig.worker_timeout_s, for this worker only (a busy host loads slowly)
            os.kill(self.proc.pid, signal.SIGSTOP)
        return request(self, *msg)

    monkeypatch.setattr(Worker, "request", freeze)
    rows = measure_speed(arts[::3], TEXTS, MeasureConfig(**SMALL), reference="fp32")
    assert rows["onnx-int8"]["status"] == "failed" and "no reply in 2 s" in rows["onnx-int8"]["reason"]
    assert "status" not in rows["fp32"]
    assert all(w.proc.poll() is not None for w in started)


def test_model_that_cannot_load_is_a_failed_row(arts, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(arts[0].path, broken)
    (broken / "model.safetensors").write_bytes(b"not a model")
    (broken / "manifest.json").write_text(json.dumps({**arts[0].manifest, "stage": "broken"}))
    rows = measure_speed([arts[0], Artifact.load(broken)], TEXTS, MeasureConfig(**SMALL), reference="fp32")
    assert rows["broken"]["status"] == "failed" and rows["broken"]["reason"].startswith("timing worker: ")
    assert "status" not in rows["fp32"]


def test_error_in_the_bench_process_stops_every_worker(arts, started):
    def boom(what):
        if what.startswith("throughput"):
            raise KeyboardInterrupt  # what Ctrl-C raises in the bench process

    with pytest.raises(KeyboardInterrupt):
        measure_speed(arts[::3], TEXTS, MeasureConfig(**SMALL), progress=boom)
    assert len(started) == 2 and all(w.proc.poll() is not None for w in started)


CTRL_C = """
import sys
from chain.artifact import Artifact
from chain.task import builtin_task
from bench.harness import MeasureConfig, measure_speed
import bench.worker as bw
init = bw.Worker.__init__
def record(self, *a, **k):
    init(self, *a, **k)
    print("worker", self.proc.pid, flush=True)
bw.Worker.__init__ = record
def progress(what):
    if what.startswith("latency"):
        print("timing", flush=True)
try:
    measure_speed([Artifact.load(d) for d in sys.argv[1:]], builtin_task("sst2").load("test").texts,
                  MeasureConfig(threads=1, latency_calls=100000, throughput_batches=1, warmup=1), progress=progress)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


@pytest.mark.slow  # flaked once (empty stdout) in a fresh-clone .ci/run, 2026-12-02; passes alone: until understood
def test_ctrl_c_stops_every_worker(chain_dirs, tmp_path):
    """A real SIGINT to the whole process group, as a terminal sends it, mid-rotation."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C)
    p = subprocess.Popen([sys.executable, str(script), str(chain_dirs[0]), str(chain_dirs[3])], cwd=REPO,
                         stdout=subprocess.PIPE, text=True, start_new_session=True)
    pids = []
    try:
        for line in p.stdout:
            if line.startswith("worker"):
                pids.append(int(line.split()[1]))
            if line.startswith("timing"):
                break
        time.sleep(0.5)
        os.killpg(p.pid, signal.SIGINT)
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert "interrupted" in out and p.returncode == 0
    assert len(pids) == 2 and all(_gone(x) for x in pids)


@pytest.mark.parametrize("mode, says", [("process", "each stage timed in a worker process of its own"),
                                        ("inprocess", "all stages timed interleaved in one process")])
def test_report_says_how_figures_were_taken(tmp_path, mode, says):
    from bench.report import write_reports

    results = {"task": "sst2", "reference": "fp32", "measure": {"latency_calls": 12, "isolation": mode},
               "environment": {"cpu": "x", "threads": 1, "versions": {}, "date": "today"}, "stages": []}
    write_reports(results, tmp_path, plots=False)
    assert says in (tmp_path / "report.md").read_text()


def test_report_gives_each_rows_memory_and_time(tmp_path):
    from bench.report import write_reports

    timed = {"name": "onnx-int8", "status": "ok", "cached": False, "wall_time_s": 8.65, "load_s": 0.41,
             "memory_mb": {"peak_rss": 312.4, "load_rss": 23.2}, "first_call_ms": 35.0,
             "timing": {"first_call_ms_batch32": float("nan")}}
    cached = {"name": "finetune", "status": "cached", "cached": True, "wall_time_s": 0.2}
    results = {"task": "sst2", "reference": "finetune", "measure": {"latency_calls": 12, "isolation": "process"},
               "environment": {"cpu": "x", "threads": 1, "versions": {}, "date": "today"},
               "stages": [cached, timed]}
    write_reports(results, tmp_path, plots=False)
    costs = (tmp_path / "report.md").read_text().split("## Memory and time")[1]
    assert "| onnx-int8 | 8.7 | 0.41 | 23 | 312 | 35.0 | — |" in costs  # NaN prints as missing
    assert "| finetune | cached | — | — | — | — | — |" in costs


def test_pool_close_asks_every_worker_before_waiting_on_any():
    """Each worker takes about a second to tear its runtime down: asked one after another, 15
    workers cost bench 15 s; asked all at once, they stop side by side."""
    from bench.worker import WorkerPool

    events = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def ask_stop(self):
            events.append(("ask", self.name))

        def close(self, graceful):
            events.append(("wait", self.name))

    pool = WorkerPool({}, threads=1)
    pool.workers = {n: Fake(n) for n in "abc"}
    pool.close()
    assert events == [("ask", "a"), ("ask", "b"), ("ask", "c"), ("wait", "a"), ("wait", "b"), ("wait", "c")]
    events.clear()
    pool.close(graceful=False)  # after an error or Ctrl-C: terminate without asking
    assert [e for e, _ in events] == ["wait"] * 3


SPIN = """
import sys
from compress.onnx_export import ort_session, spin_alone
key = "session.intra_op.allow_spinning"
shared = ort_session(sys.argv[1], 1).get_session_options().get_session_config_entry(key)
spin_alone()
alone = ort_session(sys.argv[1], 1).get_session_options().get_session_config_entry(key)
asked = ort_session(sys.argv[1], 1, spinning=False).get_session_options().get_session_config_entry(key)
print(shared, alone, asked)
"""


def test_ort_threads_spin_only_in_a_process_of_their_own(chain_dirs):
    """A session that shares its process does not spin; after ``spin_alone`` (what a timing
    worker calls) sessions spin as ONNX Runtime's default does, unless told otherwise."""
    onnx = next(d for d in chain_dirs if (d / "model.onnx").is_file())
    out = subprocess.run([sys.executable, "-c", SPIN, str(onnx / "model.onnx")], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0", "1", "0"]

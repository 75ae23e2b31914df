"""bench --search --ray: the pruning levels as Ray Tune trials (a local Ray here) give the
in-process walk's answers and leave artifacts the in-process path reuses."""
from __future__ import annotations

import json
import time

import pytest

from bench.__main__ import build_config, main, parser
from bench.search import SearchConfig, plan_of, run_search
from bench.search_ray import TRIALS, trial
from chain.errors import SpecError

ray = pytest.importorskip("ray", reason="the test extra installs ray[data,tune]")

LEVELS = [{"heads": 0.25, "ffn": 0.25}, {"heads": 0.5, "ffn": 0.5}]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _cfg(tiny_bert_dir, files, out, threads=1):
    return build_config(parser().parse_args([
        "--model", str(tiny_bert_dir), "--num-labels", "2", "--train", str(files["train"]), "--dev",
        str(files["dev"]), "--test", str(files["test"]), "--output", str(out), "--quick", "--threads",
        str(threads), "--no-peers"]))


def test_ray_trials_match_the_in_process_walk_and_fill_the_cache(local_ray, tiny_bert_dir, small_task_files,
                                                                  tmp_path):
    cfg = _cfg(tiny_bert_dir, small_task_files, tmp_path / "out")
    spec, record = run_search(cfg, SearchConfig(max_drop=100.0, levels=LEVELS, ray="local"), log=lambda *_: None)
    assert record["runner"] == "Ray Tune (local)"
    rows = record["trials"]
    assert [r["status"] for r in rows] == ["within budget", "within budget"]
    assert [r["stage"] for r in rows] == ["recovered-f25-h25", "recovered-f50-h50"]
    names = [s.name for s in spec.stages]
    assert {"recovered-f25-h25-onnx-int8", "recovered-f50-h50-onnx-int8", "onnx-int8"} <= set(names)
    arts = {p.name.rsplit("-", 1)[0] for p in (tmp_path / "out" / "artifacts").iterdir()}
    assert {"finetune", "pruned-f25-h25", "recovered-f25-h25", "pruned-f50-h50", "recovered-f50-h50"} <= arts
    assert (tmp_path / "out" / TRIALS / "f25-h25" / "log.txt").read_text()
    # the same levels walked in this process: nothing retrained, the same dev accuracies
    spec2, rec2 = run_search(cfg, SearchConfig(max_drop=100.0, levels=LEVELS), log=lambda *_: None)
    assert [r["dev_accuracy"] for r in rec2["trials"]] == [r["dev_accuracy"] for r in rows]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert all(s["cached"] for s in saved["stages"])


def test_a_trial_started_after_the_time_budget_does_not_run(tiny_bert_dir, small_task_files, tmp_path):
    plan = plan_of(_cfg(tiny_bert_dir, small_task_files, tmp_path / "out"))
    got = trial({"index": 1, "first": False, "level": LEVELS[1]}, plan=plan, output=str(tmp_path / "out"), threads=1,
                ref_artifact=str(tmp_path / "nowhere"), t0=time.time() - 10, budget=5.0)
    assert got["status"] == "not tried" and "--time-budget 5 s" in got["reason"]
    assert not (tmp_path / "out" / TRIALS).exists()


def test_more_threads_per_trial_than_the_cluster_has_is_a_clear_error(local_ray, tiny_bert_dir, small_task_files,
                                                                       tmp_path):
    cfg = _cfg(tiny_bert_dir, small_task_files, tmp_path / "out", threads=3)
    with pytest.raises(SpecError, match="--threads 3 per trial, but the Ray cluster has 2 CPUs"):
        run_search(cfg, SearchConfig(levels=LEVELS, ray="local"), log=lambda *_: None)


def test_ray_without_search_is_refused_in_one_line(capsys, tmp_path):
    assert main(["--ray", "local", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --ray runs --search's trials on Ray Tune; add --search or drop it"]

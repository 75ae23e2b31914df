"""``chainpress predict --ray``: the batch job on Ray Data (a local Ray here) writes what the
local job writes, in input order, and resumes from the same partial file."""
from __future__ import annotations

import json

import numpy as np
import pytest

from deploy.predict import Job, PredictConfig, predict
from tests.conftest import SST2

ray = pytest.importorskip("ray", reason="the test extra installs ray[data]")

LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def sst2_file(tmp_path):
    p = tmp_path / "in.tsv"
    p.write_text("\n".join((SST2 / "test.tsv").read_text().splitlines()[:201]) + "\n")  # header + 200 sentences
    return p


def rows_of(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_ray_data_predictions_equal_the_local_job(local_ray, bundle_dir, sst2_file, tmp_path):
    from deploy.predict_ray import predict_ray

    cfg = dict(bundle=str(bundle_dir), input=str(sst2_file), batch_size=16, threads=1, progress=False)
    predict(PredictConfig(output=str(tmp_path / "local.jsonl"), **cfg))
    res = predict_ray(PredictConfig(output=str(tmp_path / "ray.jsonl"), **cfg), "local", workers=2)
    assert res["engine"] == "ray-data" and res["workers"] == 2 and res["rows"] == 200 and res["computed_rows"] == 200
    local, got = rows_of(tmp_path / "local.jsonl"), rows_of(tmp_path / "ray.jsonl")
    assert [r["sentence"] for r in got] == [r["sentence"] for r in local]  # input order restored
    assert [r["pred_label"] for r in got] == [r["pred_label"] for r in local]
    np.testing.assert_allclose([[r["pred_scores"][k] for k in LABELS] for r in got],
                               [[r["pred_scores"][k] for k in LABELS] for r in local], atol=1e-5)
    assert not (tmp_path / "ray.jsonl.partial").exists()


def test_ray_job_resumes_from_the_partial_file(local_ray, bundle_dir, sst2_file, tmp_path, offline):
    from deploy.predict_ray import predict_ray

    cfg = PredictConfig(bundle=str(bundle_dir), input=str(sst2_file), output=str(tmp_path / "out.jsonl"),
                        batch_size=16, threads=1, progress=False)
    job = Job.open(cfg)  # what an interrupted run leaves: the key line and 64 finished rows
    with job.start() as f:
        job.append(f, np.arange(64), offline(job.texts[:64]))
    res = predict_ray(cfg, "local", workers=1)
    assert res["resumed_rows"] == 64 and res["computed_rows"] == 136
    got = rows_of(tmp_path / "out.jsonl")
    assert [r["pred_label"] for r in got] == [LABELS[k] for k in offline(job.texts).argmax(-1)]


def test_more_actor_cpus_than_the_cluster_has_is_a_clear_error(local_ray, bundle_dir, sst2_file, tmp_path):
    from chain.errors import SpecError
    from deploy.predict_ray import predict_ray

    cfg = PredictConfig(bundle=str(bundle_dir), input=str(sst2_file), output=str(tmp_path / "o.jsonl"),
                        threads=2, progress=False)
    with pytest.raises(SpecError, match="needs 4 CPUs; the Ray cluster has 2"):
        predict_ray(cfg, "local", workers=2)  # would otherwise wait forever for an unplaceable actor
    assert not (tmp_path / "o.jsonl").exists()


def test_ray_job_writes_every_head_of_a_multitask_bundle(local_ray, mt_bundle, sst2_file, tmp_path):
    from deploy.predict_ray import predict_ray

    cfg = dict(bundle=str(mt_bundle[0]), input=str(sst2_file), batch_size=16, threads=1, progress=False,
               max_rows=48)
    predict(PredictConfig(output=str(tmp_path / "local.jsonl"), **cfg))
    res = predict_ray(PredictConfig(output=str(tmp_path / "ray.jsonl"), **cfg), "local", workers=1)
    assert res["tasks"] == ["sst2", "subj", "trec"] and res["rows"] == 48
    local, got = rows_of(tmp_path / "local.jsonl"), rows_of(tmp_path / "ray.jsonl")
    for task in res["tasks"]:
        assert [r[f"pred_{task}_label"] for r in got] == [r[f"pred_{task}_label"] for r in local]
        np.testing.assert_allclose([list(r[f"pred_{task}_scores"].values()) for r in got],
                                   [list(r[f"pred_{task}_scores"].values()) for r in local], atol=1e-5)

"""kNN memory: neighbour votes, the dev-tuned interpolation, and the artifact's predictor."""
from __future__ import annotations

import numpy as np
import pytest

from chain.errors import SpecError
from chain.knn import KnnConfig, interpolate, knn_probs, softmax, tune


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_knn_probs_vote_of_the_nearest_by_cosine():
    keys = _unit(np.array([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9], [0.2, 1.0]]))
    labels = np.array([0, 0, 1, 1, 1])
    q = _unit(np.array([[1.0, 0.05], [0.05, 1.0]]))
    np.testing.assert_allclose(knn_probs(q, keys, labels, 2, 2), [[1, 0], [0, 1]])
    np.testing.assert_allclose(knn_probs(q, keys, labels, 5, 2), [[0.4, 0.6], [0.4, 0.6]])
    assert knn_probs(q, keys, labels, 50, 2).shape == (2, 2)  # k larger than the memory: all of it


def test_interpolation_is_a_distribution():
    p = interpolate(np.array([[1.0, 0.0]]), softmax(np.array([[0.0, 2.0]])), 0.3)
    assert p.sum() == pytest.approx(1.0) and p[0, 0] == pytest.approx(0.3 + 0.7 * softmax(np.array([0.0, 2.0]))[0])


def test_tune_keeps_the_classifier_when_the_memory_is_noise_and_uses_it_when_it_helps():
    rng = np.random.default_rng(0)
    n, h = 200, 8
    y_train = rng.integers(0, 2, n)
    centers = _unit(rng.normal(size=(2, h)))
    keys = _unit(centers[y_train] + 0.3 * rng.normal(size=(n, h)))
    y_dev = rng.integers(0, 2, 60)
    dev = _unit(centers[y_dev] + 0.3 * rng.normal(size=(60, h)))
    weak = rng.normal(size=(60, 2))  # a classifier at chance
    k, lam, acc, grid = tune(dev, weak, y_dev, keys, y_train, [4, 16], [0.0, 0.5, 0.9], 2)
    assert lam > 0 and acc > 0.9 and len(grid) == 6
    noise = rng.integers(0, 2, n)  # a memory whose labels say nothing
    strong = np.stack([y_dev == 0, y_dev == 1], 1).astype(float) * 4
    k, lam, acc, _ = tune(dev, strong, y_dev, keys, noise, [4, 16], [0.0, 0.5, 0.9], 2)
    assert (lam, acc) == (0.0, 1.0)


@pytest.mark.parametrize("kw, match", [({"ks": []}, "knn.ks"), ({"ks": [0]}, "knn.ks"),
                                       ({"lambdas": [1.5]}, "knn.lambdas"), ({"dtype": "int8"}, "knn.dtype")])
def test_bad_config(kw, match):
    with pytest.raises(SpecError, match=match):
        KnnConfig(**kw)


def test_knn_artifact_predicts_what_its_dev_tuning_measured(tmp_path, tiny_bert_dir, easy_tasks):
    """The runtime (torch top-k over the saved float16 memory) agrees with the stage's numpy tuning."""
    from chain.artifact import Artifact
    from chain.executor import run_chain
    from chain.model import load_tokenizer
    from chain.predict import encode_batches
    from chain.runtime import load_predictor
    from chain.spec import load_spec
    from chain.task import Task
    from tests.chain.conftest import make_spec

    stages = [{"name": "ft", "type": "finetune", "task": "senti"},
              {"name": "knn", "type": "knn", "config": {"ks": [4], "lambdas": [0.5], "max_length": 16}}]
    spec = load_spec(make_spec(tmp_path / "s.yaml", tiny_bert_dir, {"senti": easy_tasks["senti"]}, stages))
    res = run_chain(spec, tmp_path / "out", log=lambda *_: None)
    assert [r["status"] for r in res["stages"]] == ["ok", "ok"], [r["reason"] for r in res["stages"]]
    art = Artifact.load(res["stages"][1]["artifact"])
    knn = art.manifest["knn"]
    assert (knn["k"], knn["lambda"], knn["memory_entries"]) == (4, 0.5, 128)
    assert res["stages"][1]["size_mb"] > res["stages"][0]["size_mb"]  # the memory is counted
    dev = Task.from_dict(art.manifest["task"]).load("dev")
    pred = load_predictor(art, threads=1)
    batches = encode_batches(load_tokenizer(art), dev.texts, 8, 16)
    correct = sum(int(p == dev.labels[i]) for idx, enc in batches for p, i in zip(pred(enc).argmax(-1), idx))
    assert correct / len(dev) == pytest.approx(knn["dev_accuracy"], abs=1 / len(dev) + 1e-9)

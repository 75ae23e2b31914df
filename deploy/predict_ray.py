"""``predict`` on Ray Data: the same batch job spread over a Ray cluster's workers.

The driver reads the rows, measures token lengths (tokenizer only) and orders them into
length buckets, exactly as ``predict`` does; Ray Data then runs ``map_batches`` with one
``Classifier`` per actor (the model is loaded once per worker, not per batch), and the
driver streams the results back, appending each batch to the same ``OUTPUT.partial`` file,
so an interrupted Ray job resumes like a local one and both write identical outputs.

``address``: ``local`` starts a Ray instance in this process (what the tests use), ``auto``
joins the cluster this machine belongs to, ``ray://host:10001`` a remote one (the bundle
directory must then be readable at the same path on every node).

>>> predict_ray(PredictConfig(bundle="out/sst2", input="test.tsv", output="preds.jsonl"), "local", workers=2)
"""
from __future__ import annotations

import time

import numpy as np

from chain.errors import SpecError
from chain.ray_cluster import connect

from .bundle import Bundle
from .predict import Job, PredictConfig, batches, head_probabilities


class BundlePredictor:
    """A Ray Data actor: one bundle loaded once, then probabilities per batch of texts."""

    def __init__(self, bundle: str, threads: int, heads: dict[str, list[str]]):
        from deploy.runtime import Classifier

        self.clf = Classifier(Bundle.load(bundle, verify=False), threads=threads)
        self.heads = heads

    def __call__(self, batch: dict) -> dict:
        probs = head_probabilities(self.clf, [str(t) for t in batch["text"]], self.heads)
        return {"i": np.asarray(batch["i"], dtype=np.int64), "p": probs.astype(np.float32)}


def _ray(address: str):
    return connect(address, needs="Ray Data", pip="ray[data]")


def predict_ray(cfg: PredictConfig, address: str = "local", workers: int = 1) -> dict:
    """``predict(cfg)`` with the model calls on Ray Data (``workers`` actors of ``cfg.threads`` threads)."""
    if workers < 1:
        raise SpecError(f"--ray-workers must be >= 1, got {workers}")
    job = Job.open(cfg)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(job.bundle.path))
    lengths = [len(x) for x in tok(job.texts, truncation=True, max_length=job.bundle.max_length)["input_ids"]]
    resumed = len(job.done)
    order = [int(i) for b in batches(lengths, cfg.batch_size, cfg.bucketing) for i in b if int(i) not in job.done]
    t0 = time.perf_counter()
    ray = _ray(address)
    cpus = ray.cluster_resources().get("CPU", 0)
    if workers * cfg.threads > cpus:  # Ray would wait forever for actors it cannot place
        raise SpecError(f"--ray-workers {workers} x --threads {cfg.threads} needs {workers * cfg.threads} CPUs; "
                        f"the Ray cluster has {cpus:g}: lower --ray-workers or --threads")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.progress
    if not cfg.progress:
        import logging

        logging.getLogger("ray.data").setLevel(logging.WARNING)
    with job.start() as f:
        t_model = time.perf_counter()
        if order:
            ds = ray.data.from_items([{"i": i, "text": job.texts[i]} for i in order],
                                     override_num_blocks=max(1, min(len(order) // cfg.batch_size, 64)))
            ds = ds.map_batches(BundlePredictor, batch_size=cfg.batch_size, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=workers),
                                fn_constructor_kwargs={"bundle": str(job.bundle.path.resolve()),
                                                       "threads": cfg.threads, "heads": job.heads},
                                num_cpus=cfg.threads)
            for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
                job.append(f, b["i"], b["p"])
        model_s = time.perf_counter() - t_model
    return {**job.finish(cfg, lengths, resumed, t0, model_s), "engine": "ray-data", "ray_address": address,
            "workers": workers}

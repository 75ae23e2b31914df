"""Evaluation after every stage: accuracy on the stage's own task and every earlier one.

A PyTorch artifact (``hf`` or ``torch-int8``) is loaded once and each task's head
(``chain.heads``) is put on its encoder in turn; a multi-task ONNX/OpenVINO graph has one
output per task (its manifest's ``heads``), each evaluated on its task; a single-task
graph on its own task only (the other cells say why they are empty).
Results are cached in the artifact's manifest under ``evaluations``, keyed by a hash of
the evaluation settings and the task data, so a resumed run never re-evaluates.

>>> ev = Evaluator(EvalConfig(), {"sst2": builtin_task("sst2")})
>>> ev.accuracy(artifact, ["sst2"])["sst2"]["accuracy"]
0.8929
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass

from .artifact import MANIFEST, Artifact, save_manifest
from .errors import SpecError
from .heads import swap_head_
from .task import Task

_LABELS = {"onnx": "ONNX", "openvino": "OpenVINO"}  # runtime-only formats, as a note names them


@dataclass
class EvalConfig:
    split: str = "test"  # what results report (the forgetting matrix, bench's accuracy column)
    gate_split: str | None = "dev"  # what gates, retries and rollbacks decide on; None = `split`
    max_length: int = 128
    batch_size: int = 64
    max_samples: int | None = None  # first N examples of each task's split (quick runs)
    latency_samples: int = 100  # batch-1 calls per model when a gate has max_latency_ms
    threads: int | None = None  # intra-op threads for evaluation and training; None = torch's default

    def __post_init__(self) -> None:
        if self.split not in ("dev", "test"):
            raise SpecError(f"eval.split must be 'dev' or 'test', got {self.split!r}")
        if self.gate_split not in (None, "dev", "test"):
            raise SpecError(f"eval.gate_split must be 'dev', 'test' or null, got {self.gate_split!r}")
        for name in ("max_length", "batch_size", "latency_samples", "max_samples", "threads"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise SpecError(f"eval.{name} must be positive, got {v!r}")

    def key(self, task: Task) -> str:
        """Changes whenever the numbers would (settings that move accuracy, task data)."""
        cfg = {k: v for k, v in asdict(self).items() if k in ("split", "max_length", "batch_size", "max_samples")}
        blob = json.dumps({"eval": cfg, "task": task.fingerprint()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def write_manifest_fields(artifact: Artifact, **fields) -> None:
    """Merge fields into a published artifact's manifest (atomic replace); a plain source
    model directory (no manifest file) is never written to."""
    artifact.manifest.update(fields)
    if (artifact.path / MANIFEST).is_file():
        save_manifest(artifact.path, artifact.manifest)


class Evaluator:
    """Accuracy on ``cfg.split``, cached in each manifest under ``store`` (the executor keeps
    the gates' split in a second evaluator with its own store)."""

    def __init__(self, cfg: EvalConfig, tasks: dict[str, Task], trust_remote_code: bool = False,
                 store: str = "evaluations"):
        self.cfg, self.tasks, self.trust_remote_code, self.store = cfg, tasks, trust_remote_code, store
        self._splits: dict = {}
        self._batches: dict = {}

    def split(self, task: str):
        if task not in self._splits:
            data = self.tasks[task].load(self.cfg.split)
            self._splits[task] = data.head(self.cfg.max_samples) if self.cfg.max_samples else data
        return self._splits[task]

    def accuracy(self, artifact: Artifact, tasks: list[str]) -> dict[str, dict]:
        """{task: {"accuracy": float | None, "examples": n, "note": why None}} (cached)."""
        cached = artifact.manifest.get(self.store, {})
        keys = {t: self.cfg.key(self.tasks[t]) for t in tasks}
        out = {t: cached[t] for t in tasks if cached.get(t, {}).get("eval_key") == keys[t]}
        todo = [t for t in tasks if t not in out]
        if todo:
            for t, res in self._measure(artifact, todo).items():
                out[t] = {**res, "eval_key": keys[t]}
            write_manifest_fields(artifact, **{self.store: {**cached, **{t: out[t] for t in todo}}})
        return {t: out[t] for t in tasks}

    def _batches_for(self, artifact: Artifact, task: str):
        from .model import load_tokenizer
        from .predict import encode_batches

        if task not in self._batches:
            tok = load_tokenizer(artifact, self.trust_remote_code)
            self._batches[task] = encode_batches(tok, self.split(task).texts, self.cfg.batch_size,
                                                 self.cfg.max_length, sort_by_length=True)
        return self._batches[task]

    def _measure(self, artifact: Artifact, tasks: list[str]) -> dict[str, dict]:
        from .runtime import model_loader

        own = (artifact.manifest.get("task") or {}).get("name")
        if artifact.format != "hf" and model_loader(artifact.format) is None:  # onnx, openvino: a runtime only
            return self._measure_onnx(artifact, tasks, own)
        from .model import load_model
        from .predict import scores, torch_predictor

        model = load_model(artifact, trust_remote_code=self.trust_remote_code)
        out = {}
        for t in sorted(tasks, key=lambda t: t != own):  # own task first: its head is the loaded one
            task = self.tasks[t]
            if not swap_head_(model, artifact.path, t) and t != own:
                out[t] = {"accuracy": None, "examples": 0, "note": f"the artifact carries no head for {t}"}
                continue
            pred = torch_predictor(model, artifact.name)
            batches = self._batches_for(artifact, t)
            n_out = pred(batches[0][1]).shape[-1]
            if n_out != task.num_labels:
                out[t] = {"accuracy": None, "examples": 0,
                          "note": f"the model has {n_out} outputs, task {t} has {task.num_labels} labels"}
                continue
            out[t] = {**scores(pred, batches, self.split(t).labels), "examples": len(self.split(t))}
        return out

    def _measure_onnx(self, artifact: Artifact, tasks: list[str], own: str | None) -> dict[str, dict]:
        from .predict import scores
        from .runtime import load_predictor

        heads = artifact.manifest.get("heads") or {}
        out = {}
        for t in tasks:
            if t != own and t not in heads:
                out[t] = {"accuracy": None, "examples": 0,
                          "note": f"this {_LABELS.get(artifact.format, artifact.format)} artifact has no output "
                                  f"for {t} (export a parent carrying its head to get one)"}
                continue
            pred = load_predictor(artifact, self.cfg.threads or 1, self.trust_remote_code, task=t)
            batches = self._batches_for(artifact, t)
            n_out = pred(batches[0][1]).shape[-1]
            if n_out != self.tasks[t].num_labels:
                out[t] = {"accuracy": None, "examples": 0,
                          "note": f"the model has {n_out} outputs for {t}, task {t} has "
                                  f"{self.tasks[t].num_labels} labels"}
                continue
            out[t] = {**scores(pred, batches, self.split(t).labels), "examples": len(self.split(t))}
        return out

    def latency(self, artifact: Artifact, parent: Artifact, task: str) -> dict:
        """Batch-1 p50 latency (ms) of the artifact and its parent, timed interleaved (cached)."""
        key = self.cfg.key(self.tasks[task]) + f"-n{self.cfg.latency_samples}-t{self.cfg.threads}"
        cached = artifact.manifest.get("latency") or {}
        if cached.get("eval_key") == key:
            return cached
        from .model import load_tokenizer
        from .predict import encode_batches
        from .runtime import load_predictor, timer

        time_interleaved = timer()

        texts = self.split(task).texts
        texts = random.Random(0).sample(texts, min(len(texts), self.cfg.latency_samples))
        encs = [e for _, e in encode_batches(load_tokenizer(artifact, self.trust_remote_code), texts, 1,
                                             self.cfg.max_length)]
        threads = self.cfg.threads or 1
        preds = {"stage": load_predictor(artifact, threads, self.trust_remote_code),
                 "parent": load_predictor(parent, threads, self.trust_remote_code)}
        timing = time_interleaved({n: (lambda i, p=p: p(encs[i % len(encs)])) for n, p in preds.items()},
                                  n_calls=len(encs), warmup=5)
        stats = getattr(timing, "stats", timing)  # bench.timing.Timing, or a plain {name: Stats}
        res = {"eval_key": key, "p50_ms": round(stats["stage"].p50_ms, 3),
               "parent_p50_ms": round(stats["parent"].p50_ms, 3), "calls": len(encs), "threads": threads}
        write_manifest_fields(artifact, latency=res)
        return res

"""``knn``: instance-based prediction from a memory of the training set's encoder embeddings.

For an input x with the classifier's input representation h(x) (BERT: the pooled [CLS]
vector the head reads), the k training examples nearest by cosine similarity vote:
p_knn = label counts / k, and the prediction is p = lam * p_knn + (1 - lam) * p_model
(Khandelwal et al.'s kNN-LM interpolation, for classification). k and lam are picked on
the dev split; lam = 0 (the classifier alone) is always a candidate, so the stage never
claims a gain the dev split did not show.

The ``knn`` artifact is the parent's files (hard-linked) plus ``knn_memory.safetensors``
(N x H unit vectors in float16 and N labels); per input it costs one extra (1, H) x (H, N)
product and a top-k. Its row reports the memory's size with the model's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from .artifact import Artifact, link_files
from .errors import ModelError, SpecError
from .registry import register_stage
from .stage import RunContext, Stage

MEMORY = "knn_memory.safetensors"


@dataclass
class KnnConfig:
    ks: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])
    lambdas: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(10)])
    max_length: int = 64
    batch_size: int = 64
    max_train_samples: int | None = None  # None: the whole training split in memory
    dtype: str = "float16"  # the memory's storage type

    def __post_init__(self) -> None:
        if not self.ks or any(isinstance(k, bool) or not isinstance(k, int) or k <= 0 for k in self.ks):
            raise SpecError(f"knn.ks must be a non-empty list of positive integers, got {self.ks!r}")
        if not self.lambdas or any(not isinstance(x, (int, float)) or not 0 <= x <= 1 for x in self.lambdas):
            raise SpecError(f"knn.lambdas must be a non-empty list of numbers in [0, 1], got {self.lambdas!r}")
        for name in ("max_length", "batch_size"):
            if getattr(self, name) <= 0:
                raise SpecError(f"knn.{name} must be positive, got {getattr(self, name)!r}")
        if self.max_train_samples is not None and self.max_train_samples <= 0:
            raise SpecError(f"knn.max_train_samples must be positive, got {self.max_train_samples!r}")
        if self.dtype not in ("float16", "float32"):
            raise SpecError(f"knn.dtype must be float16 or float32, got {self.dtype!r}")


class Representation:
    """The classifier's input for a batch (a forward pre-hook on ``model.classifier``)."""

    def __init__(self, model):
        head = getattr(model, "classifier", None)
        if head is None:
            raise ModelError(f"{type(model).__name__} has no `classifier` module; the knn stage needs the "
                             "representation its head reads (BERT family)")
        self.value = None
        head.register_forward_pre_hook(self._keep)

    def _keep(self, module, args):
        x = args[0]
        self.value = x[:, 0] if x.dim() == 3 else x  # a head over the sequence: its [CLS] position


def encode(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(unit embeddings (N, H), logits (N, C)) of ``texts``, in order."""
    import torch

    from .predict import encode_batches

    rep = Representation(model)
    model.eval()
    embs = logits = None
    for idx, enc in encode_batches(tokenizer, texts, batch_size, max_length, sort_by_length=True):
        with torch.inference_mode():
            out = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.float().numpy()
        h = torch.nn.functional.normalize(rep.value.float(), dim=-1).numpy()
        if embs is None:
            embs = np.zeros((len(texts), h.shape[-1]), np.float32)
            logits = np.zeros((len(texts), out.shape[-1]), np.float32)
        embs[idx], logits[idx] = h, out
    return embs, logits


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def knn_probs(queries: np.ndarray, keys: np.ndarray, labels: np.ndarray, k: int, num_labels: int) -> np.ndarray:
    """(Q, C) label distribution of each query's k nearest keys (cosine: rows are unit vectors)."""
    sims = queries.astype(np.float32) @ keys.astype(np.float32).T  # (Q, N)
    k = min(k, keys.shape[0])
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (Q, k), unordered
    votes = labels[top]  # (Q, k)
    return np.stack([(votes == c).mean(1) for c in range(num_labels)], axis=1)


def interpolate(p_knn: np.ndarray, p_model: np.ndarray, lam: float) -> np.ndarray:
    return lam * p_knn + (1 - lam) * p_model


def tune(dev_emb, dev_logits, dev_labels, keys, labels, ks, lambdas, num_labels) -> tuple[int, float, float, list]:
    """(k, lam, dev accuracy, grid) with the best dev accuracy; ties: smaller lam, then smaller k."""
    y = np.asarray(dev_labels)
    p_model = softmax(dev_logits)
    grid, best = [], None
    for k in sorted(ks):
        p_knn = knn_probs(dev_emb, keys, labels, k, num_labels)
        for lam in sorted(lambdas):
            acc = float((interpolate(p_knn, p_model, lam).argmax(-1) == y).mean())
            grid.append({"k": k, "lambda": lam, "dev_accuracy": acc})
            if best is None or acc > best[2] or (acc == best[2] and (lam, k) < (best[1], best[0])):
                best = (k, lam, acc)
    return best[0], best[1], best[2], grid


def _train_dev(parent: Artifact, task, cfg: KnnConfig):
    """The parent's own train/dev split when it was fine-tuned here (same seed, exclusions)."""
    from .finetune_config import FineTuneConfig, train_dev

    pc = parent.manifest.get("config") or {}
    kw = {k: pc[k] for k in ("seed", "dev_fraction", "exclude") if k in pc}
    return train_dev(task, FineTuneConfig(task=task.to_dict(), max_train_samples=cfg.max_train_samples, **kw))


@register_stage("knn")
@dataclass
class Knn(Stage):
    """The parent plus a kNN memory of its training-set embeddings, interpolated with its softmax."""
    needs_task: ClassVar[bool] = True
    output_format: ClassVar[str] = "knn"

    config: KnnConfig = field(default_factory=KnnConfig)
    name: str = "knn"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext | None = None) -> dict:
        import time

        from safetensors.numpy import save_file

        from .heads import swap_head_
        from .model import load_model, load_tokenizer

        ctx = ctx or RunContext()
        task = ctx.require_task(self.name, "builds its memory from the task's training split")
        cfg = self.config
        model = load_model(parent, trust_remote_code=ctx.trust_remote_code)
        swap_head_(model, parent.path, task.name)
        tok = load_tokenizer(parent, ctx.trust_remote_code)
        train, dev = _train_dev(parent, task, cfg)
        t0 = time.perf_counter()
        keys, _ = encode(model, tok, train.texts, cfg.max_length, cfg.batch_size)
        build_s = time.perf_counter() - t0
        labels = np.asarray(train.labels, dtype=np.int64)
        dev_emb, dev_logits = encode(model, tok, dev.texts, cfg.max_length, cfg.batch_size)
        keys = keys.astype(cfg.dtype)
        k, lam, acc, grid = tune(dev_emb, dev_logits, dev.labels, keys, labels, cfg.ks, cfg.lambdas, task.num_labels)
        base = next(g["dev_accuracy"] for g in grid if g["lambda"] == min(cfg.lambdas))
        link_files(parent.path, out_dir)
        (out_dir / MEMORY).unlink(missing_ok=True)
        save_file({"keys": keys, "labels": labels}, str(out_dir / MEMORY))
        return {"format": "knn", "num_labels": task.num_labels, "task": task.to_dict(),
                "knn": {"k": k, "lambda": lam, "dev_accuracy": acc, "dev_accuracy_lowest_lambda": base,
                        "memory_entries": int(keys.shape[0]), "dim": int(keys.shape[1]), "dtype": cfg.dtype,
                        "memory_mb": round((out_dir / MEMORY).stat().st_size / 1e6, 3),
                        "build_s": round(build_s, 1), "grid": grid}}


def knn_predictor(artifact: Artifact, threads: int, trust_remote_code: bool = False):
    """Logits out as log p of the interpolated distribution (argmax is the prediction)."""
    import torch
    from safetensors.numpy import load_file

    from .model import load_model
    from .predict import Predictor

    torch.set_num_threads(threads)
    spec = artifact.manifest.get("knn") or {}
    if "k" not in spec or not (artifact.path / MEMORY).is_file():
        raise ModelError(f"{artifact.path}: not a knn artifact (no {MEMORY} or k/lambda); re-run the knn stage")
    model = load_model(Artifact(artifact.path, {**artifact.manifest, "format": "hf"}),
                       trust_remote_code=trust_remote_code).eval()
    rep = Representation(model)
    mem = load_file(str(artifact.path / MEMORY))
    keys = torch.from_numpy(mem["keys"].astype(np.float32))  # (N, H)
    labels = torch.from_numpy(mem["labels"])
    k, lam, n_cls = min(int(spec["k"]), keys.shape[0]), float(spec["lambda"]), int(artifact.manifest["num_labels"])

    def run(enc: dict) -> np.ndarray:
        with torch.inference_mode():
            logits = model(**{name: torch.from_numpy(v) for name, v in enc.items()}).logits.float()
            p = torch.softmax(logits, -1)  # (B, C)
            if lam > 0:
                q = torch.nn.functional.normalize(rep.value.float(), dim=-1)  # (B, H)
                top = (q @ keys.T).topk(k, dim=-1).indices  # (B, k)
                p_knn = torch.nn.functional.one_hot(labels[top], n_cls).float().mean(1)  # (B, C)
                p = lam * p_knn + (1 - lam) * p
        return torch.log(p.clamp_min(1e-12)).numpy()

    return Predictor(artifact.name, "pytorch+knn", run)


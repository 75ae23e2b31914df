"""The fine-tune stage's config and the data it trains on (decontaminated, subsampled).

Kept apart from ``chain.finetune`` (the Trainer run) so a spec can be parsed and its data
checked without importing the training code's dependencies.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field

from .augment import AugmentSettings
from .errors import SpecError
from .task import Split, Task, builtin_task, normalize_text

HEAD_POLICIES = ("auto", "new", "keep")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class LoraSettings:
    """LoRA through ``peft``; the adapter is merged into the weights before saving.

    ``merge: None`` adds it to the parent's weights (``merge_and_unload``). A merge method
    (chain.lora_merge) trains it on the chain's shared base instead and saves base + the
    merge of every task's adapter so far (TIES, DARE, task arithmetic), each task's vector
    kept under ``lora_merge/``."""
    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    # None = the architecture's attention Q/V projections (chain.arch: query/value for BERT,
    # q_lin/v_lin for DistilBERT, q_proj/v_proj for Llama, c_attn for GPT-2, ...)
    target_modules: list[str] | None = None
    merge: str | None = None  # task_arithmetic, ties, dare_linear, dare_ties, magnitude_prune
    density: float = 0.5  # fraction of each task vector kept by the pruning methods
    weight: float = 1.0  # every task vector's weight in the merge

    def __post_init__(self) -> None:
        for name in ("r", "alpha"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise SpecError(f"finetune.lora.{name} must be a positive integer, got {v!r}")
        if not 0 <= self.dropout < 1:
            raise SpecError(f"finetune.lora.dropout must be in [0, 1), got {self.dropout!r}")
        from .lora_merge import METHODS

        if self.merge is not None and self.merge not in METHODS:
            raise SpecError(f"finetune.lora.merge must be one of {', '.join(METHODS)} (or absent), got {self.merge!r}")
        for name, lo in (("density", 0.0), ("weight", 0.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= lo:
                raise SpecError(f"finetune.lora.{name} must be a number > 0, got {v!r}")
        if self.density > 1:
            raise SpecError(f"finetune.lora.density must be in (0, 1], got {self.density!r}")
        if self.target_modules is None:
            return
        if not self.target_modules or not all(isinstance(m, str) for m in self.target_modules):
            raise SpecError(f"finetune.lora.target_modules must be a list of module names, got {self.target_modules!r}")
        self.target_modules = list(self.target_modules)


@dataclass
class DistillSettings:
    """Knowledge distillation from a teacher (e.g. the unpruned parent) to recover accuracy.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE
    (Hinton et al.; T^2 keeps the soft term's gradient scale independent of T).
    ``hidden > 0`` adds ``hidden * MSE`` between the student's hidden states and the teacher's
    (embeddings, then each student layer j against teacher layer round(j * L_t / L_s); real
    tokens only), as TinyBERT and CoFi do for students of the teacher's width. The teacher
    then runs at every step (its hidden states are too large to carry), about a third more
    step time for the MiniLM teacher.
    """
    # An earlier stage's name (in a chain) or the directory of an HF model / chainpress
    # artifact with a head for this task.
    teacher: str = ""
    alpha: float = 0.5  # weight of the soft (KL) term
    temperature: float = 2.0
    hidden: float = 0.0  # weight of the hidden-state MSE term (0: logits only)
    # Teacher-labelled edits of the train sentences added to the recovery's data (chain.augment)
    augment: AugmentSettings | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, str) or not self.teacher:
            raise SpecError("finetune.distill.teacher: name the teacher: an earlier stage (e.g. the one before "
                            "pruning) or a model directory")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise SpecError(f"finetune.distill.alpha must be in [0, 1], got {self.alpha!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
            raise SpecError(f"finetune.distill.temperature must be positive, got {self.temperature!r}")
        h = self.hidden
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not math.isfinite(h) or h < 0:
            raise SpecError(f"finetune.distill.hidden must be a finite number >= 0, got {self.hidden!r}")
        if isinstance(self.augment, dict):
            try:
                self.augment = AugmentSettings(**self.augment)
            except TypeError as e:
                raise SpecError(f"finetune.distill.augment: {e}") from None
        if self.augment is not None and not isinstance(self.augment, AugmentSettings):
            raise SpecError(f"finetune.distill.augment must be a mapping (copies, p, span, edits, seed), "
                            f"got {self.augment!r}")


@dataclass
class RehearsalSettings:
    """Replay a seeded ``fraction`` of every earlier task's train split in this stage.

    "Earlier tasks" are those whose heads the parent carries (``tasks: auto``) or the named
    ones; each replayed example is scored by its own task's head (``chain.multihead``), and
    every head it trains is saved back into the artifact. The stage's ``exclude`` list
    (decontamination) applies to the replayed splits too.
    """
    fraction: float = 0.1
    tasks: str | list[str] = "auto"

    def __post_init__(self) -> None:
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or not 0 < f <= 1:
            raise SpecError(f"finetune.rehearsal.fraction must be in (0, 1], got {f!r}")
        if isinstance(self.tasks, str):
            if self.tasks != "auto":
                raise SpecError(f"finetune.rehearsal.tasks must be 'auto' or a list of task names, got {self.tasks!r}")
        elif not self.tasks or not all(isinstance(t, str) and t for t in self.tasks):
            raise SpecError(f"finetune.rehearsal.tasks must be 'auto' or a non-empty list of task names, "
                            f"got {self.tasks!r}")
        else:
            self.tasks = list(self.tasks)


@dataclass
class L2SPSettings:
    """``loss = L_task + weight * ||theta - theta_parent||^2`` over the encoder (Li et al., L2-SP).

    The sum runs over every trainable encoder parameter (frozen ones cannot move), so
    ``weight`` is per squared unit of total drift, not per parameter.
    """
    weight: float = 0.01

    def __post_init__(self) -> None:
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise SpecError(f"finetune.l2sp.weight must be a finite number >= 0, got {w!r}")


@dataclass
class EWCSettings:
    """``loss = L_task + weight * sum_i F_i (theta_i - theta_parent_i)^2`` (Kirkpatrick et al., EWC).

    ``F`` is the diagonal empirical Fisher of the parent on its own task: the mean squared
    per-example gradient of its loss over ``samples`` training sentences of that task."""
    weight: float = 100.0
    samples: int = 256

    def __post_init__(self) -> None:
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise SpecError(f"finetune.ewc.weight must be a finite number >= 0, got {w!r}")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples <= 0:
            raise SpecError(f"finetune.ewc.samples must be a positive integer, got {self.samples!r}")


@dataclass
class FineTuneConfig:
    task: str | dict = "sst2"  # built-in task name or a Task as dict
    epochs: float = 3.0
    learning_rate: float = 1e-4
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_length: int = 128
    seed: int = 42
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    dev_fraction: float = 0.1  # used only when the task has no dev split
    # Parts kept fixed: "embeddings" and/or "layers:K" (the first K encoder layers).
    # Freezing MiniLM's 11.7M embedding parameters halves the AdamW step on CPU.
    freeze: list[str] = field(default_factory=list)
    lora: LoraSettings | None = None
    distill: DistillSettings | None = None  # soft targets from a teacher (recovery after pruning)
    # Forgetting control (chain/multihead.py, chain/regularize.py): replay earlier tasks'
    # training data through their own heads, and/or pull the encoder toward the parent's.
    rehearsal: RehearsalSettings | None = None
    l2sp: L2SPSettings | None = None
    ewc: EWCSettings | None = None
    # Head at the start: "auto" = the parent's head for this task if it carries one (or
    # its current head if it was trained on this task), else a fresh one; "new"; "keep".
    head: str = "auto"
    # Fault injection for experiments and tests: permute the train and dev labels (seeded),
    # as in a mislabelled data set, so the stage learns nothing useful and its gate must
    # reject it. Test labels (what gates measure) are untouched.
    shuffle_labels: bool = False
    # Decontamination: drop from the training set every text of these task splits, e.g.
    # [{"task": "sst2", "split": "test"}] (a chain spec's `decontaminate: true` fills it).
    exclude: list[dict] = field(default_factory=list)
    processes: int = 1  # > 1: DDP over N local processes via torchrun (gloo on CPU)
    # Matmul precision while training (weights and optimizer stay fp32): "bf16" autocast,
    # "fp32", or "auto" = bf16 where the hardware has bf16 arithmetic (``train_precision``).
    precision: str = "auto"
    show_progress: bool = True
    extra_args: dict = field(default_factory=dict)  # passed through to TrainingArguments

    def __post_init__(self) -> None:
        for name in ("epochs", "learning_rate", "batch_size", "max_length", "processes"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise SpecError(f"finetune.{name} must be a positive finite number, got {v!r}")
        for name in ("weight_decay", "warmup_ratio"):
            v = getattr(self, name, 0.0)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise SpecError(f"finetune.{name} must be a finite number >= 0, got {v!r}")
        if self.extra_args:
            _check_extra_args(self.extra_args)
        for name in ("batch_size", "max_length", "processes", "seed"):
            if not isinstance(getattr(self, name), int):
                raise SpecError(f"finetune.{name} must be an integer, got {getattr(self, name)!r}")
        for part in self.freeze:
            if part != "embeddings" and not re.fullmatch(r"layers:\d+", str(part)):
                raise SpecError(f"finetune.freeze: {part!r} is not 'embeddings' or 'layers:K'")
        if self.precision not in PRECISIONS:
            raise SpecError(f"finetune.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not 0 < self.dev_fraction < 1:
            raise SpecError(f"finetune.dev_fraction must be in (0, 1), got {self.dev_fraction}")
        if self.head not in HEAD_POLICIES:
            raise SpecError(f"finetune.head must be one of {HEAD_POLICIES}, got {self.head!r}")
        for i, ex in enumerate(self.exclude):
            if not isinstance(ex, dict) or set(ex) != {"task", "split"} or not isinstance(ex["split"], str):
                raise SpecError(f"finetune.exclude[{i}] must be {{task: NAME or task mapping, split: NAME}}, got {ex!r}")
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        if isinstance(self.distill, dict):
            self.distill = DistillSettings(**self.distill)
        if isinstance(self.rehearsal, dict):
            self.rehearsal = RehearsalSettings(**self.rehearsal)
        if isinstance(self.l2sp, dict):
            self.l2sp = L2SPSettings(**self.l2sp)
        if self.rehearsal is not None and (self.lora is not None or self.distill is not None):
            raise SpecError("finetune.rehearsal cannot be combined with lora or distill yet; use one of them")
        if isinstance(self.ewc, dict):
            self.ewc = EWCSettings(**self.ewc)
        for name in ("l2sp", "ewc"):
            if getattr(self, name) is not None and self.lora is not None:
                raise SpecError(f"finetune.{name}: `lora` already keeps the base weights fixed; remove one of them")
        if self.l2sp is not None and self.ewc is not None:
            raise SpecError("finetune: `l2sp` and `ewc` both pull toward the parent; choose one")
        if self.lora is not None and self.freeze:
            raise SpecError("finetune: `lora` already freezes the base model; remove `freeze`")

    def get_task(self) -> Task:
        return builtin_task(self.task) if isinstance(self.task, str) else Task.from_dict(self.task)


def train_precision(precision: str) -> str:
    """``auto`` as this machine trains: bf16 autocast on a CUDA GPU that supports it or a CPU with
    AVX512_BF16/AMX, else fp32. On a 2-vCPU AMD EPYC with AVX512_BF16 a MiniLM step on SST-2
    batches of 32 took 0.30-0.33 s under bf16 autocast against 0.44-0.48 s in fp32
    (benchmarks/train_step_precision.py, docs/results/bench-2026-12-04-avx512.md)."""
    if precision != "auto":
        return precision
    import torch

    from .environment import native_bf16

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if native_bf16() else "fp32"


def _check_extra_args(extra: dict) -> None:
    """Unknown ``extra_args`` keys fail at validation, not when Trainer starts."""
    import dataclasses

    from transformers import TrainingArguments

    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise SpecError(f"finetune.extra_args: unknown TrainingArguments field(s) {unknown}; see "
                        "transformers.TrainingArguments for the names")


def excluded_texts(cfg: FineTuneConfig) -> set[str]:
    """Normalised texts of the ``exclude`` splits (see ``FineTuneConfig.exclude``)."""
    out = set()
    for ex in cfg.exclude:
        t = builtin_task(ex["task"]) if isinstance(ex["task"], str) else Task.from_dict(ex["task"])
        out |= {normalize_text(x) for x in t.load(ex["split"]).texts}
    return out


def drop_texts(split: Split, texts: set[str]) -> Split:
    keep = [i for i, t in enumerate(split.texts) if normalize_text(t) not in texts]
    return Split([split.texts[i] for i in keep], [split.labels[i] for i in keep])


def train_dev(task: Task, cfg: FineTuneConfig) -> tuple[Split, Split]:
    """The stage's training and dev sets: decontaminated first, then subsampled."""
    train = task.load("train")
    if task.has_split("dev"):
        dev = task.load("dev")
    else:  # seeded holdout from train
        idx = list(range(len(train)))
        random.Random(cfg.seed).shuffle(idx)
        n_dev = max(1, int(len(idx) * cfg.dev_fraction))
        dev_idx, tr_idx = sorted(idx[:n_dev]), sorted(idx[n_dev:])
        dev = Split([train.texts[i] for i in dev_idx], [train.labels[i] for i in dev_idx])
        train = Split([train.texts[i] for i in tr_idx], [train.labels[i] for i in tr_idx])
    if cfg.exclude:
        banned = excluded_texts(cfg)
        train, dev = drop_texts(train, banned), drop_texts(dev, banned)
        if not len(train) or not len(dev):
            raise SpecError(f"finetune.exclude removes every {'training' if not len(train) else 'dev'} text of "
                            f"task {task.name!r}; it is the same data as an excluded split")
    if cfg.max_train_samples:
        train = _subsample(train, cfg.max_train_samples, cfg.seed)
    if cfg.max_eval_samples:
        dev = dev.head(cfg.max_eval_samples)
    return train, dev


def rehearsal_split(task: Task, cfg: FineTuneConfig) -> Split:
    """The seeded ``rehearsal.fraction`` of ``task``'s training set (decontaminated by the
    stage's ``exclude``; a task without a dev split keeps its dev holdout out of it)."""
    import dataclasses

    plain = dataclasses.replace(cfg, task=task.to_dict(), max_train_samples=None, max_eval_samples=None)
    train, _ = train_dev(task, plain)
    n = max(1, round(cfg.rehearsal.fraction * len(train)))
    return _subsample(train, n, cfg.seed)


def shuffled_labels(split: Split, seed: int) -> Split:
    labels = list(split.labels)
    random.Random(seed + 1).shuffle(labels)
    return Split(split.texts, labels)


def _subsample(split: Split, n: int, seed: int) -> Split:
    idx = sorted(random.Random(seed).sample(range(len(split)), min(n, len(split))))
    return Split([split.texts[i] for i in idx], [split.labels[i] for i in idx])

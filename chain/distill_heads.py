"""``distill_heads``: recover a pruned multi-task model by distilling every head at once.

After pruning, a chain's artifact still carries every task's head (``chain.heads``), but
the shrunken encoder moved under all of them. A ``finetune`` with ``distill:`` recovers
one task; this stage recovers all: the student (the parent: pruned encoder + every head)
matches the teacher's (the unpruned stage named by ``teacher``) softened logits on EVERY
head, on a pool of training texts drawn from every task. Labels are not read, so the
pool may mix tasks freely; the encoder runs once per text and each head reads its output
(``MultiHead``), for student and teacher alike.

    loss = mean over heads of T^2 * KL(softmax(teacher_t / T) || softmax(student_t / T))

It is a plain HF ``Trainer`` run with a ``compute_loss`` override (like finetune's
distillation), so it runs, logs and stops on a non-finite loss like a fine-tune stage.

>>> {"name": "recovered", "type": "distill_heads", "parent": "pruned", "config": {"teacher": "sst2"}}
"""
from __future__ import annotations

import copy
import math
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .artifact import Artifact, read_manifest
from .errors import SpecError, TrainingError
from .heads import head_labels, head_tasks, load_head, save_head, set_head_, set_labels_
from .model import load_model, load_tokenizer
from .registry import register_stage
from .stage import RunContext, Stage
from .task import Task, builtin_task


@dataclass
class DistillHeadsConfig:
    # The teacher: an earlier stage's name (the unpruned one) or a directory of an artifact
    # carrying a head for every task distilled.
    teacher: str = ""
    tasks: list[str] | None = None  # heads to distil; None = every head the parent carries
    texts_per_task: int = 2000  # training texts drawn (seeded) from each task's train split
    epochs: float = 1.0
    learning_rate: float = 5e-5
    batch_size: int = 32
    max_length: int = 64
    temperature: float = 2.0
    freeze: list[str] = field(default_factory=lambda: ["embeddings"])
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    seed: int = 42

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, str) or not self.teacher:
            raise SpecError("distill_heads.teacher: name the teacher: the stage before pruning (e.g. `teacher: "
                            "sst2`) or an artifact directory carrying every head")
        for k in ("texts_per_task", "batch_size", "max_length"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SpecError(f"distill_heads.{k} must be a positive integer, got {v!r}")
        for k in ("epochs", "learning_rate", "temperature"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise SpecError(f"distill_heads.{k} must be positive, got {v!r}")
        if self.tasks is not None and (not isinstance(self.tasks, list) or not self.tasks):
            raise SpecError(f"distill_heads.tasks must be a non-empty list of task names, got {self.tasks!r}")


def _shared_encoder_cls():
    from torch import nn

    class SharedEncoder(nn.Module):
        """The base model, run once per batch: every head's forward gets the cached output."""

        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder
            self.cache = None

        def forward(self, *args, **kwargs):
            if self.cache is None:
                self.cache = self.encoder(*args, **kwargs)
            return self.cache

    return SharedEncoder


def multi_head(model, heads: dict[str, tuple[dict, list[str] | None]]):
    """A module returning {task: logits} from one encoder pass: one shallow task model per head
    (``heads``: {task: (head state, label names)}), all sharing ``model``'s base model."""
    from torch import nn

    prefix = model.base_model_prefix
    base = getattr(model, prefix)
    shared = _shared_encoder_cls()(base)
    setattr(model, prefix, nn.Identity())  # deep-copy the head modules only, never the encoder
    try:
        per_task = {}
        for task, (state, labels) in heads.items():
            m = copy.deepcopy(model)
            set_head_(m, state, num_labels=None if labels else _rows(state), labels=labels)
            setattr(m, prefix, shared)
            per_task[task] = m
    finally:
        setattr(model, prefix, base)

    class MultiHead(nn.Module):
        main_input_name = "input_ids"

        def __init__(self):
            super().__init__()
            self.shared = shared
            self.heads = nn.ModuleDict(per_task)
            self.config = model.config

        def forward(self, **inputs):
            self.shared.cache = None
            try:
                return {t: m(**inputs).logits for t, m in self.heads.items()}
            finally:
                self.shared.cache = None

    return MultiHead()


def _rows(state: dict) -> int:
    return int([v for k, v in state.items() if k.endswith("weight") and v.dim() == 2][-1].shape[0])


def lineage_tasks(artifact: Artifact) -> dict[str, Task]:
    """{name: Task} of every task recorded along the artifact's parent links (manifests)."""
    found: dict[str, Task] = {}
    path, seen = Path(artifact.path), set()
    while path is not None and path not in seen:
        seen.add(path)
        m = read_manifest(path) if (path / "manifest.json").is_file() else None
        if not m:
            break
        t = m.get("task")
        if t and t.get("name") not in found:
            try:
                found[t["name"]] = Task.from_dict(t)
            except (TypeError, SpecError):
                pass
        path = Path(m["parent"]) if m.get("parent") else None
    return found


def _task(name: str, known: dict[str, Task]) -> Task:
    if name in known:
        return known[name]
    try:
        return builtin_task(name)
    except SpecError:
        raise SpecError(f"distill_heads: head {name!r} names no task recorded in the parent's lineage nor a "
                        "built-in one; give `tasks:` without it") from None


def text_pool(tasks: list[Task], per_task: int, seed: int) -> list[str]:
    """A seeded sample of up to ``per_task`` train texts of each task, shuffled together."""
    rng = random.Random(seed)
    pool = []
    for t in tasks:
        texts = t.load("train").texts
        pool += rng.sample(texts, min(per_task, len(texts)))
    rng.shuffle(pool)
    return pool


class _Texts:
    def __init__(self, tokenizer, texts: list[str], max_length: int):
        enc = tokenizer(texts, truncation=True, max_length=max_length)
        self.rows = [{k: v[i] for k, v in enc.items()} for i in range(len(texts))]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _heads(artifact: Artifact, tasks: list[str], role: str) -> dict:
    out = {}
    for t in tasks:
        state = load_head(artifact.path, t)
        if state is None:
            raise SpecError(f"distill_heads: the {role} {artifact.path} carries no head for {t!r} "
                            f"(it has {head_tasks(artifact.path)})")
        out[t] = (state, head_labels(artifact.path, t))
    return out


def _trainer_cls(teacher, temperature: float):
    import torch
    import torch.nn.functional as F
    from transformers import Trainer

    teacher.eval().requires_grad_(False)

    class HeadsDistillTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            student = model(**inputs)
            with torch.no_grad():
                target = teacher.to(next(iter(student.values())).device)(**inputs)
            T = temperature
            losses = [F.kl_div(F.log_softmax(student[t] / T, -1), F.log_softmax(target[t] / T, -1),
                               log_target=True, reduction="batchmean") * T * T for t in student]
            loss = torch.stack(losses).mean()
            if not torch.isfinite(loss):
                raise TrainingError(f"distill_heads loss became {loss.item()} at step {self.state.global_step + 1}; "
                                    "lower the learning rate")
            return (loss, student) if return_outputs else loss

    return HeadsDistillTrainer


@register_stage("distill_heads")
@dataclass
class DistillHeads(Stage):
    """Distil every head of a pruned multi-task model from its unpruned teacher at once."""
    refs: ClassVar[tuple[str, ...]] = ("teacher",)
    config: DistillHeadsConfig = field(default_factory=DistillHeadsConfig)
    name: str = "distill-heads"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext | None = None) -> dict:
        from transformers import DataCollatorWithPadding, TrainingArguments, set_seed

        from .finetune import freeze_

        ctx = ctx or RunContext()
        cfg = self.config
        if parent.format != "hf":
            raise SpecError(f"stage {self.name!r} trains a PyTorch (hf) parent, got {parent.format}; put it "
                            "right after the prune stage")
        own = (parent.manifest.get("task") or {}).get("name")
        tasks = list(cfg.tasks) if cfg.tasks is not None else head_tasks(parent.path)
        if not tasks:
            raise SpecError(f"stage {self.name!r}: the parent {parent.path} carries no heads (heads/); distil "
                            "an artifact of a fine-tune chain")
        if own is not None and own not in tasks:
            raise SpecError(f"stage {self.name!r}: `tasks` must include the artifact's own task {own!r} (its head "
                            "is the model's); add it")
        teacher_art = Artifact.load(cfg.teacher)
        set_seed(cfg.seed)
        known = {**lineage_tasks(parent), **lineage_tasks(teacher_art)}
        pool = text_pool([_task(t, known) for t in tasks], cfg.texts_per_task, cfg.seed)
        tok = load_tokenizer(parent, ctx.trust_remote_code)
        model = load_model(parent, trust_remote_code=ctx.trust_remote_code)
        frozen = freeze_(model, cfg.freeze)
        student = multi_head(model, _heads(parent, tasks, "parent"))
        teacher = multi_head(load_model(teacher_art, trust_remote_code=ctx.trust_remote_code),
                             _heads(teacher_art, tasks, "teacher"))
        trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
        scratch = out_dir / "_trainer"
        args = TrainingArguments(
            output_dir=str(scratch), num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate,
            per_device_train_batch_size=cfg.batch_size, weight_decay=cfg.weight_decay,
            warmup_ratio=cfg.warmup_ratio, seed=cfg.seed, data_seed=cfg.seed, eval_strategy="no",
            save_strategy="no", group_by_length=True, logging_steps=10, report_to=[], disable_tqdm=True,
            dataloader_num_workers=0, remove_unused_columns=False, use_cpu=True)
        trainer = _trainer_cls(teacher, cfg.temperature)(
            model=student, args=args, train_dataset=_Texts(tok, pool, cfg.max_length),
            data_collator=DataCollatorWithPadding(tok))
        out = trainer.train()
        if not math.isfinite(out.training_loss):
            raise TrainingError(f"distill_heads training loss is {out.training_loss}; lower the learning rate")
        student.eval()
        for t, m in student.heads.items():
            save_head(m, out_dir, t, labels=head_labels(parent.path, t))
        main = own or tasks[0]
        final = student.heads[main]
        setattr(final, final.base_model_prefix, student.shared.encoder)  # a plain model again
        set_labels_(final, head_labels(parent.path, main), _rows(load_head(out_dir, main)))
        final.save_pretrained(out_dir, safe_serialization=True)
        tok.save_pretrained(out_dir)
        shutil.rmtree(scratch, ignore_errors=True)
        return {"format": "hf", "num_labels": final.config.num_labels, "labels": list(final.config.id2label.values()),
                "distill_heads": {"teacher": str(teacher_art.path), "tasks": tasks, "texts": len(pool),
                                  "texts_per_task": cfg.texts_per_task, "loss": out.training_loss,
                                  "steps": out.global_step, "frozen_params": frozen, "trainable_params": trainable,
                                  "temperature": cfg.temperature}}

"""``FineTune``: fine-tune the parent model on a task with ``transformers.Trainer``.

Dynamic padding (``DataCollatorWithPadding``) and length-grouped batches keep CPU steps
short, and bf16 autocast where the hardware has bf16 arithmetic (``precision: auto``) shortens
them again; the checkpoint with the best dev accuracy is kept (``load_best_model_at_end``);
a NaN/inf loss stops training with ``TrainingError`` instead of saving garbage.

Chains: the encoder is carried over from the parent; the head is the parent's head for
this task if it has one, else a fresh one (``head: auto``); every earlier task's head is
copied into the artifact (``chain.heads``) so forgetting can be measured. LoRA adapters
(``lora:``) are merged into the weights before saving, so the artifact is a plain model;
``lora.merge`` trains each task's adapter on a shared base and merges them all (``chain.lora_merge``).
``distill:`` mixes the loss with KL to a teacher's softened logits (recovery after pruning).

Because it is a plain ``Trainer`` run, it also works unchanged under ``torchrun`` /
``accelerate launch``: ``processes: N`` launches the stage as N DDP processes
(``chain.distributed``).
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from . import lora_merge
from .artifact import Artifact
from .augment import augment
from .distill import attach_teacher_logits_, augmented_rows, distill_trainer_cls, load_teacher
from .errors import SpecError, TrainingError
from .heads import (copy_heads, head_labels, head_tasks, load_head, reinit_head_, save_head, save_head_state,
                    set_head_, set_labels_)
from .model import load_model, load_tokenizer
from .registry import register_stage
from .stage import RunContext, Stage
# the config and the data it trains on live in finetune_config; importable from here too
from .finetune_config import DistillSettings, FineTuneConfig, LoraSettings, shuffled_labels, train_dev  # noqa: F401
from .finetune_config import rehearsal_split, train_precision
from .task import Split, Task, builtin_task

class _Encoded:
    """A list-backed dataset of tokenized examples (no padding: the collator pads)."""

    def __init__(self, tokenizer, split: Split, max_length: int, task_id: int | None = None):
        enc = tokenizer(split.texts, truncation=True, max_length=max_length)
        tag = {} if task_id is None else {"task_ids": task_id}  # which head scores it (chain.multihead)
        self.rows = [{**{k: v[i] for k, v in enc.items()}, "labels": split.labels[i], **tag}
                     for i in range(len(split))]

    def __add__(self, other: "_Encoded") -> "_Encoded":
        both = _Encoded.__new__(_Encoded)
        both.rows = self.rows + other.rows
        return both

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def freeze_(model, parts: list[str]) -> int:
    """Set requires_grad=False on the named parts; return the number of frozen parameters.

    Where the embeddings and the blocks live comes from the architecture's declaration
    (``chain.arch``), so GPT-2 (``wte``/``wpe``, ``h``) and Llama (``embed_tokens``,
    ``layers``) freeze like BERT.
    """
    from .arch import arch_for, check_stage

    arch = arch_for(model)
    check_stage("finetune", model.config, {"freeze": parts})
    modules = []
    for part in parts:
        if part == "embeddings":
            modules.extend(model.get_submodule(arch.full(model, p)) for p in arch.embedding_modules)
        else:
            k = int(part.split(":")[1])
            layers = model.get_submodule(arch.full(model, arch.blocks))
            if k > len(layers):
                raise SpecError(f"finetune.freeze: layers:{k} but the model has {len(layers)} layers")
            modules.extend(layers[:k])
    n = 0
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)
            n += p.numel()
    return n


def _guarded_trainer_cls():
    """Trainer that stops at the first non-finite loss (Trainer's own logging filters NaNs out)."""
    import torch
    from transformers import Trainer

    class GuardedTrainer(Trainer):
        def training_step(self, *args, **kwargs):
            loss = super().training_step(*args, **kwargs)
            if not torch.isfinite(loss).all():
                raise TrainingError(f"training loss became {loss.item()} at step {self.state.global_step + 1}; "
                                    "lower the learning rate or check the labels and inputs")
            return loss

    return GuardedTrainer


def _accuracy(eval_pred) -> dict:
    import numpy as np

    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def prepare_head_(model, parent: Artifact, task: Task, policy: str) -> str:
    """Choose the head the stage starts from (see ``FineTuneConfig.head``); return which."""
    saved = load_head(parent.path, task.name) if policy == "auto" else None
    if saved is not None:
        set_head_(model, saved, task.num_labels)
        return "parent's head for this task"
    parent_task = (parent.manifest.get("task") or {}).get("name")
    same_shape = parent.manifest.get("num_labels") == task.num_labels
    if policy == "keep" or (policy == "auto" and parent_task == task.name and same_shape):
        if not same_shape and parent.manifest.get("num_labels") is not None:
            raise SpecError(f"finetune.head: keep needs the parent's {parent.manifest.get('num_labels')} labels, "
                            f"task {task.name!r} has {task.num_labels}")
        return "parent's current head"
    reinit_head_(model)
    return "new head"


def apply_lora(model, lora: LoraSettings):
    from peft import LoraConfig, TaskType, get_peft_model

    targets = lora.target_modules
    if targets is None:
        from .arch import arch_for

        targets = arch_for(model).lora_targets
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=list(targets))
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:  # e.g. a target module name that does not exist
        raise SpecError(f"finetune.lora: {e}") from None


def _merge_task_vectors(peft_model, parent: Artifact, task: str, cfg: FineTuneConfig):
    """The plain model with base + merge(every task's adapter), and what ``lora_merge.write`` keeps."""
    vectors = {t: v for t, v in lora_merge.read_vectors(parent.path).items() if t != task}
    vectors[task] = lora_merge.task_vector(peft_model)
    plain = peft_model.unload()  # the base weights, this task's trained head
    names = sorted(set().union(*(v.keys() for v in vectors.values())))
    base = lora_merge.base_weights(plain, names)
    lora = cfg.lora
    lora_merge.apply_(plain, lora_merge.merge(vectors, lora.merge, lora.density, lora.weight, cfg.seed))
    settings = {"method": lora.merge, "density": lora.density, "weight": lora.weight, "seed": cfg.seed}
    return plain, (base, vectors, {**settings, "tasks": list(vectors)})


def carried_tasks(parent: Artifact) -> dict[str, dict]:
    """{task: Task dict} of the tasks the parent carries a head for, as far as its manifest knows."""
    defs = dict(parent.manifest.get("head_tasks") or {})
    own = parent.manifest.get("task")
    if own:
        defs.setdefault(own["name"], own)
    return defs


def rehearsal_tasks(parent: Artifact, task: Task, cfg: FineTuneConfig) -> list[Task]:
    """The earlier tasks this stage replays: every head the parent carries (``auto``) or the named ones."""
    heads = [t for t in head_tasks(parent.path) if t != task.name]
    names = heads if cfg.rehearsal.tasks == "auto" else cfg.rehearsal.tasks
    missing = [t for t in names if t not in heads]
    if missing:
        raise SpecError(f"finetune.rehearsal.tasks: the parent carries no head for {missing} (it has "
                        f"{heads or 'none besides this task'}); rehearsal trains the heads it carries")
    defs = carried_tasks(parent)
    out = []
    for name in names:
        if name in defs:
            out.append(Task.from_dict(defs[name]))
            continue
        try:
            out.append(builtin_task(name))
        except SpecError:
            raise SpecError(f"finetune.rehearsal: the parent has a head for {name!r} but no record of its data; "
                            "name the tasks to replay in rehearsal.tasks") from None
    return out


def parent_fisher(parent: Artifact, cfg: FineTuneConfig, tok, ctx: RunContext) -> dict:
    """EWC's diagonal Fisher of the parent on its own task (``cfg.ewc.samples`` seeded training
    sentences), computed on a copy of the parent with its own head."""
    from transformers import DataCollatorWithPadding

    from .regularize import fisher_diagonal

    own = parent.manifest.get("task")
    if not own:
        raise SpecError("finetune.ewc needs a parent fine-tuned on a task (its Fisher is measured there); "
                        "this parent's manifest names none")
    ptask = Task.from_dict(own)
    pmodel = load_model(parent, trust_remote_code=ctx.trust_remote_code)  # the parent's own head
    freeze_(pmodel, cfg.freeze)  # the same trainable weights as the stage's
    sample = dataclasses.replace(cfg, task=own, max_train_samples=cfg.ewc.samples, max_eval_samples=None)
    train, _ = train_dev(ptask, sample)
    return fisher_diagonal(pmodel, _Encoded(tok, train, cfg.max_length).rows, DataCollatorWithPadding(tok))


@register_stage("finetune")
@dataclass
class FineTune(Stage):
    """Fine-tune the parent on a task with transformers.Trainer (LoRA, distillation, DDP optional)."""
    trains_on_task: ClassVar[bool] = True
    refs: ClassVar[tuple[str, ...]] = ("distill.teacher",)
    retry_field: ClassVar[str | None] = "learning_rate"
    not_in_key: ClassVar[tuple[str, ...]] = ("show_progress",)

    @classmethod
    def key_config(cls, config: FineTuneConfig) -> FineTuneConfig:
        return dataclasses.replace(config, precision=train_precision(config.precision))

    config: FineTuneConfig = field(default_factory=FineTuneConfig)
    name: str = "finetune"
    parent: str | None = None

    def run(self, parent: Artifact, out_dir: Path, ctx: RunContext | None = None) -> dict:
        ctx = ctx or RunContext()
        if self.config.processes > 1 and not _distributed():
            from .distributed import launch_finetune

            return launch_finetune(self, parent, out_dir, ctx)
        return self.train(parent, out_dir, ctx)

    def train(self, parent: Artifact, out_dir: Path, ctx: RunContext | None = None) -> dict:
        """Train in this process (one rank of a DDP run under torchrun); rank 0 writes."""
        from transformers import DataCollatorWithPadding, TrainingArguments, set_seed

        ctx = ctx or RunContext()
        cfg = self.config
        task = cfg.get_task()
        precision = train_precision(cfg.precision)
        set_seed(cfg.seed)
        tok = load_tokenizer(parent, ctx.trust_remote_code)
        model = load_model(parent, num_labels=task.num_labels, trust_remote_code=ctx.trust_remote_code)
        head = prepare_head_(model, parent, task, cfg.head)
        model.train()
        frozen = freeze_(model, cfg.freeze)
        merging = cfg.lora is not None and cfg.lora.merge is not None
        if merging:  # every task's adapter trains on the same base (chain.lora_merge)
            lora_merge.restore_base_(model, parent.path)
        if cfg.lora is not None:
            model = apply_lora(model, cfg.lora)
        anchor = None
        if cfg.l2sp is not None or cfg.ewc is not None:
            from .regularize import Anchor

            fisher = parent_fisher(parent, cfg, tok, ctx) if cfg.ewc is not None else None
            anchor = Anchor.of(model, fisher)  # the parent's encoder, before any step
        train, dev = train_dev(task, cfg)
        if cfg.shuffle_labels:
            train, dev = shuffled_labels(train, cfg.seed), shuffled_labels(dev, cfg.seed + 1)
        tagged = cfg.rehearsal is not None
        train_ds = _Encoded(tok, train, cfg.max_length, 0 if tagged else None)
        replayed: dict[str, int] = {}
        earlier = rehearsal_tasks(parent, task, cfg) if tagged else []
        if tagged:
            from .multihead import MultiHead

            model = MultiHead(model, task.name, {t.name: load_head(parent.path, t.name) for t in earlier})
            for t in earlier:
                split = rehearsal_split(t, cfg)
                train_ds = train_ds + _Encoded(tok, split, cfg.max_length, model.task_id(t.name))
                replayed[t.name] = len(split)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        scratch = out_dir / "_trainer"
        kw = dict(
            output_dir=str(scratch), num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate,
            per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=64,
            weight_decay=cfg.weight_decay, warmup_ratio=cfg.warmup_ratio, seed=cfg.seed,
            data_seed=cfg.seed, eval_strategy="epoch", save_strategy="epoch", save_total_limit=2,
            load_best_model_at_end=True, metric_for_best_model="accuracy", greater_is_better=True,
            save_safetensors=True, group_by_length=True, logging_steps=10, report_to=[],
            disable_tqdm=True, dataloader_num_workers=0, use_cpu=not _cuda(),
            bf16=precision == "bf16")  # autocast: weights and AdamW state stay fp32
        if _distributed():  # frozen parameters are simply outside DDP's buckets
            kw.update(ddp_find_unused_parameters=False, **({} if _cuda() else {"ddp_backend": "gloo"}))
        if tagged or cfg.distill is not None:  # MultiHead reads task_ids; distillation, teacher_logits
            kw.update(remove_unused_columns=False, label_names=["labels"])
        args = TrainingArguments(**{**kw, **cfg.extra_args})  # extra_args override the defaults
        trainer_cls = _guarded_trainer_cls()
        teacher_s, augmented = None, 0
        if cfg.distill is not None:  # the teacher scores the train split once, not at every step
            teacher = load_teacher(cfg.distill, task, ctx.trust_remote_code)
            if not cfg.distill.hidden:  # with hidden states the teacher runs at every step anyway
                teacher_s = attach_teacher_logits_(teacher, train_ds.rows, DataCollatorWithPadding(tok))
            if cfg.distill.augment is not None:
                extra = augmented_rows(tok, augment(train.texts, cfg.distill.augment), cfg.max_length, teacher,
                                       keep_logits=not cfg.distill.hidden)
                train_ds.rows.extend(extra)
                augmented = len(extra)
            trainer_cls = distill_trainer_cls(trainer_cls, teacher, cfg.distill)
        if anchor is not None:
            from .regularize import l2sp_trainer_cls

            trainer_cls = l2sp_trainer_cls(trainer_cls, anchor, cfg.l2sp or cfg.ewc)
        # model selection on this task's dev split (task id 0: the model's own head)
        trainer = trainer_cls(model=model, args=args, train_dataset=train_ds,
                              eval_dataset=_Encoded(tok, dev, cfg.max_length, 0 if tagged else None),
                              data_collator=DataCollatorWithPadding(tok), compute_metrics=_accuracy)
        _progress_callbacks(trainer, bar=cfg.show_progress and not ctx.quiet, raw_logs=ctx.verbose)
        out = trainer.train()
        if not math.isfinite(out.training_loss):
            raise TrainingError(f"training loss is {out.training_loss}; lower the learning rate")
        dev_metrics = trainer.evaluate()
        final = trainer.model
        heads = {}
        if tagged:  # back to a plain HF model with this task's head; the others are head files
            heads, final = final.head_states(), final.model
        merged = None
        if merging:
            final, merged = _merge_task_vectors(final, parent, task.name, cfg)
        elif cfg.lora is not None:
            final = final.merge_and_unload()  # plain weights: compression stages see a normal model
        names = task.label_names()  # id2label in config.json: pipeline() and ORTModel answer with names
        set_labels_(final, names, task.num_labels)
        if trainer.is_world_process_zero():
            # save_pretrained, not trainer.save_model: the latter also pickles training_args.bin
            final.save_pretrained(out_dir, safe_serialization=True)
            tok.save_pretrained(out_dir)
            copy_heads(parent.path, out_dir, skip=task.name)
            if merged is not None:
                lora_merge.write(out_dir, *merged)
            save_head(final, out_dir, task.name, labels=names)
            for t in earlier:  # the replayed tasks' heads, updated by this stage
                save_head_state(heads[t.name], out_dir, t.name, labels=head_labels(parent.path, t.name))
            shutil.rmtree(scratch, ignore_errors=True)
        carried = {**carried_tasks(parent), **{t.name: t.to_dict() for t in earlier}, task.name: task.to_dict()}
        return {"format": "hf", "num_labels": task.num_labels, "labels": list(final.config.id2label.values()),
                "task": task.to_dict(), "task_fingerprint": task.fingerprint(), "head_tasks": carried,
                "train": {"loss": out.training_loss, "steps": out.global_step, "examples": len(train),
                          "dev_accuracy": dev_metrics.get("eval_accuracy"), "dev_examples": len(dev),
                          "frozen_params": frozen, "trainable_params": trainable, "head": head,
                          "processes": int(args.world_size), "precision": "bf16" if args.bf16 else "fp32",
                          "shuffled_labels": cfg.shuffle_labels,
                          "distilled_from": cfg.distill.teacher if cfg.distill else None,
                          "teacher_logits_s": None if teacher_s is None else round(teacher_s, 1),
                          "augmented_examples": augmented or None,
                          "rehearsal_examples": replayed or None,
                          "lora_merge": None if merged is None else merged[2],
                          "l2sp": None if cfg.l2sp is None else {"weight": cfg.l2sp.weight,
                                                                 "encoder_distance": anchor.distance()},
                          "ewc": None if cfg.ewc is None else {"weight": cfg.ewc.weight, "samples": cfg.ewc.samples,
                                                               "encoder_distance": anchor.distance()}}}


def _progress_callbacks(trainer, bar: bool, raw_logs: bool) -> None:
    """A progress bar (``bar``) and Trainer's raw log dicts only with ``-v`` (``raw_logs``)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class Bar(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if raw_logs:
                super().on_log(args, state, control, logs=logs, **kwargs)

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if bar:
        trainer.add_callback(Bar)
    elif raw_logs:
        trainer.add_callback(PrinterCallback)


def _distributed() -> bool:
    """True in a rank started by torchrun / accelerate launch."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()

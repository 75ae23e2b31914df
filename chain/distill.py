"""Distillation in ``FineTune``: the loss mixed with KL to a teacher's softened logits, and
optionally (``hidden``) with the MSE between the student's and the teacher's hidden states.

The teacher's logits for the training examples are computed once, before training, in
inference mode on length-sorted batches, and carried in each example (``teacher_logits``).
Without that, a recovery fine-tune runs the full teacher forward at every step of every
epoch: for the MiniLM teacher and its half-pruned student, batch 32 of 30 tokens on a
2-vCPU EPYC, 0.17 s of a 0.51 s step. The teacher is in eval mode (no dropout), so its
logits do not change between epochs; only the padding of a batch differs, which the
attention mask hides. Batches without carried logits (dev evaluation) run the teacher, and
so does every training batch when ``hidden`` is on (nothing is carried then).
"""
from __future__ import annotations

import time

from .artifact import Artifact
from .errors import SpecError
from .finetune_config import DistillSettings
from .heads import load_head, set_head_
from .model import load_model
from .task import Task

KEY = "teacher_logits"


def load_teacher(settings: DistillSettings, task: Task, trust_remote_code: bool = False):
    """The teacher with its head for ``task``; ``SpecError`` if it cannot score that task."""
    teacher_art = Artifact.load(settings.teacher)
    teacher = load_model(teacher_art, trust_remote_code=trust_remote_code)
    head = load_head(teacher_art.path, task.name)
    own = (teacher_art.manifest.get("task") or {}).get("name")
    if head is not None:
        set_head_(teacher, head, task.num_labels)
    elif own is not None and own != task.name:
        raise SpecError(f"finetune.distill.teacher {settings.teacher} has no head for task {task.name!r} "
                        f"(it was trained on {own!r})")
    if teacher.config.num_labels != task.num_labels:
        raise SpecError(f"finetune.distill.teacher has {teacher.config.num_labels} outputs, "
                        f"task {task.name!r} has {task.num_labels} labels")
    return teacher


def attach_teacher_logits_(teacher, rows: list[dict], collator, batch_size: int = 64) -> float:
    """Store ``teacher``'s logits in every row (under ``KEY``); return the seconds it took."""
    import torch

    t0 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher.eval().requires_grad_(False).to(device)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))  # little padding
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = collator([{k: v for k, v in rows[i].items() if k not in ("labels", KEY)} for i in idx])
            logits = teacher(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
            for i, row_logits in zip(idx, logits):
                rows[i][KEY] = row_logits.tolist()
    return time.perf_counter() - t0


def augmented_rows(tok, texts: list[str], max_length: int, teacher, keep_logits: bool = True) -> list[dict]:
    """Training rows for unlabelled ``texts`` (chain.augment's edits), labelled by ``teacher``:
    its logits carried for the soft term and their argmax as the hard label. ``keep_logits``
    False (``hidden`` on: the teacher runs at every step) drops the logits again, as no other
    row carries any then."""
    from transformers import DataCollatorWithPadding

    enc = tok(texts, truncation=True, max_length=max_length)
    rows = [{k: v[i] for k, v in enc.items()} for i in range(len(texts))]
    attach_teacher_logits_(teacher, rows, DataCollatorWithPadding(tok))
    for r in rows:
        logits = r[KEY] if keep_logits else r.pop(KEY)
        r["labels"] = max(range(len(logits)), key=logits.__getitem__)
    return rows


def distill_trainer_cls(base: type, teacher, settings: DistillSettings):
    """``base`` with its loss mixed with KL to ``teacher``'s softened logits; the teacher is
    an attribute of the Trainer, not of the model, so no optimizer or DDP wrapper sees it.
    Logits carried in the batch (``attach_teacher_logits_``) are used instead of a forward."""
    import torch
    import torch.nn.functional as F

    teacher.eval().requires_grad_(False)
    hidden = settings.hidden > 0

    class DistillTrainer(base):
        teacher_forwards = 0  # batches the teacher had to score during training or evaluation

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            carried = inputs.pop(KEY, None)
            layers = hidden and model.training  # evaluation needs logits only (and returns what it gets)
            outputs = model(**inputs, **({"output_hidden_states": True} if layers else {}))  # CE: outputs.loss
            if carried is not None and not layers:
                t_logits = carried.to(outputs.logits.device, outputs.logits.dtype)
            else:
                DistillTrainer.teacher_forwards += 1
                with torch.no_grad():
                    t_out = teacher.to(outputs.logits.device)(
                        **{k: v for k, v in inputs.items() if k != "labels"},
                        **({"output_hidden_states": True} if layers else {}))
                t_logits = t_out.logits
            T = settings.temperature
            kl = F.kl_div(F.log_softmax(outputs.logits / T, dim=-1), F.log_softmax(t_logits / T, dim=-1),
                          log_target=True, reduction="batchmean") * T * T
            loss = settings.alpha * kl + (1 - settings.alpha) * outputs.loss
            if layers:
                loss = loss + settings.hidden * hidden_mse(outputs.hidden_states, t_out.hidden_states,
                                                           inputs.get("attention_mask"))
            return (loss, outputs) if return_outputs else loss

    return DistillTrainer


def layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """(student, teacher) hidden-state indices: embeddings to embeddings, then student layer j
    to teacher layer round(j * L_t / L_s), so the last layers always meet (TinyBERT's uniform map)."""
    return [(0, 0)] + [(j, round(j * teacher_layers / student_layers)) for j in range(1, student_layers + 1)]


def hidden_mse(student: tuple, teacher: tuple, mask=None):
    """Mean squared difference of mapped hidden states over real tokens (``mask`` 1), averaged
    over the pairs; ``SpecError`` when the widths differ (no projection is learned)."""
    import torch

    if student[-1].shape[-1] != teacher[-1].shape[-1]:
        raise SpecError(f"finetune.distill.hidden needs a teacher of the student's width: "
                        f"{teacher[-1].shape[-1]} vs {student[-1].shape[-1]}; set hidden: 0")
    pairs = layer_map(len(student) - 1, len(teacher) - 1)
    w = torch.ones(student[0].shape[:2], device=student[0].device) if mask is None else mask.float()
    w = (w / w.sum().clamp(min=1)).unsqueeze(-1)
    total = sum((((student[s].float() - teacher[t].float()) ** 2) * w).sum() / student[s].shape[-1]
                for s, t in pairs)
    return total / len(pairs)

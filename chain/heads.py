"""Per-task classification heads carried from stage to stage.

A chain Subj -> SST-5 -> SST-2 replaces the classification head at every stage (2, then
5, then 2 labels) while the encoder is carried over. To measure forgetting, each
fine-tune artifact keeps the head every earlier task was trained with, as
``heads/<task>.safetensors``: evaluating the final model on Subj puts Subj's head back
on the final encoder (the "multi-head" protocol of continual learning). The artifact
then serves every task of its chain.

The head is every parameter outside the base model (``model.base_model_prefix``):
``classifier.*`` for BERT, ``pre_classifier.*`` + ``classifier.*`` for DistilBERT.
A head file also records its task's label names (safetensors metadata), so swapping a
head swaps ``config.id2label`` with it: Subj's head answers subjective/objective, not
SST-2's negative/positive, though both have two outputs.

>>> save_head(model, out_dir, "sst2", labels=["negative", "positive"])
>>> swap_head_(model, artifact.path, "subj")   # now predicts Subj's 2 labels, by name
True
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

HEADS_DIR = "heads"


def _safe(task: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", task):
        raise ValueError(f"task name {task!r} cannot name a head file")
    return task


def head_state(model) -> dict:
    """{name: tensor} of the parameters and buffers outside the base model."""
    prefix = model.base_model_prefix + "."
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
            if not k.startswith(prefix) and "." in k}


def head_path(artifact_dir: Path, task: str) -> Path:
    return Path(artifact_dir) / HEADS_DIR / f"{_safe(task)}.safetensors"


def save_head(model, artifact_dir: Path, task: str, labels: list[str] | None = None) -> Path:
    """Write the head of ``model`` for ``task``; ``labels`` (class names in id order) travel with it."""
    return save_head_state(head_state(model), artifact_dir, task, labels)


def save_head_state(state: dict, artifact_dir: Path, task: str, labels: list[str] | None = None) -> Path:
    """Write a head given as its tensors (e.g. ``MultiHead.head_states()[task]``), as ``save_head``."""
    from safetensors.torch import save_file

    path = head_path(artifact_dir, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"task": task, **({"labels": json.dumps(list(labels))} if labels is not None else {})}
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path), metadata=meta)
    return path


def head_labels(artifact_dir: Path, task: str) -> list[str] | None:
    """The label names saved with ``task``'s head (None: no head, or one saved without names)."""
    path = head_path(artifact_dir, task)
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("labels")
    return json.loads(raw) if raw else None


def load_head(artifact_dir: Path, task: str) -> dict | None:
    path = head_path(artifact_dir, task)
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    return load_file(str(path))


def head_tasks(artifact_dir: Path) -> list[str]:
    d = Path(artifact_dir) / HEADS_DIR
    return sorted(p.stem for p in d.glob("*.safetensors")) if d.is_dir() else []


def copy_heads(src_dir: Path, dst_dir: Path, skip: str | None = None) -> list[str]:
    """Copy every head of ``src_dir`` except ``skip`` (the task being retrained)."""
    copied = []
    for task in head_tasks(src_dir):
        if task != skip:
            dst = head_path(dst_dir, task)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(head_path(src_dir, task), dst)
            copied.append(task)
    return copied


def set_labels_(model, labels: list[str] | None, num_labels: int | None = None) -> None:
    """``config.id2label``/``label2id`` from class names in id order (``LABEL_i`` if None)."""
    n = len(labels) if labels is not None else (num_labels or model.config.num_labels)
    names = list(labels) if labels is not None else [f"LABEL_{i}" for i in range(n)]
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: i for i, name in enumerate(names)}
    model.num_labels = model.config.num_labels = n  # used by the loss only; logits follow the weights


def set_head_(model, state: dict, num_labels: int | None = None, labels: list[str] | None = None) -> None:
    """Load a head into ``model`` in place, resizing linear layers whose shape differs.

    ``labels`` name its classes; without them a swapped head gets ``LABEL_i``, never the
    names of the head it replaced."""
    import torch
    from torch import nn

    for key, tensor in state.items():
        mod_name, _, attr = key.rpartition(".")
        module = model.get_submodule(mod_name)
        current = getattr(module, attr)
        if current.shape != tensor.shape:
            if not isinstance(module, nn.Linear):
                raise ValueError(f"head tensor {key} has shape {tuple(tensor.shape)}, model has {tuple(current.shape)}")
            out_f, in_f = (tensor.shape if attr == "weight" else (tensor.shape[0], module.in_features))
            new = nn.Linear(in_f, out_f, bias=module.bias is not None)
            parent_name, _, child = mod_name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
            module = new
        with torch.no_grad():
            getattr(module, attr).copy_(tensor)
    if labels is not None and num_labels is not None and len(labels) != num_labels:
        raise ValueError(f"{len(labels)} label names for a head of {num_labels} labels")
    if labels is not None or num_labels is not None:
        set_labels_(model, labels, num_labels)


def swap_head_(model, artifact_dir: Path, task: str) -> bool:
    """Put ``task``'s saved head and its label names on ``model``; False if there is none."""
    state = load_head(artifact_dir, task)
    if state is None:
        return False
    labels = head_labels(artifact_dir, task)
    set_head_(model, state, num_labels=None if labels else _outputs(state), labels=labels)
    return True


def _outputs(state: dict) -> int:
    """Number of classes of a head state: the rows of its last weight matrix."""
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return int(weights[-1].shape[0])


def reinit_head_(model) -> None:
    """Fresh, seeded initialisation of the head (``set_seed`` first for reproducibility)."""
    prefix = model.base_model_prefix
    for name, child in model.named_children():
        if name != prefix:
            for m in child.modules():
                model._init_weights(m)

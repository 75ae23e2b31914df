"""Per-task classification heads carried from stage to stage.

A chain Subj -> SST-5 -> SST-2 replaces the classification head at every stage (2, then
5, then 2 labels) while the encoder is carried over. To measure forgetting, each
fine-tune artifact keeps the head every earlier task was trained with, as
``heads/<task>.safetensors``: evaluating the final model on Subj puts Subj's head back
on the final encoder (the "multi-head" protocol of continual learning). The artifact
then serves every task of its chain.

The head is every parameter outside the base model (``model.base_model_prefix``):
``classifier.*`` for BERT, ``pre_classifier.*`` + ``classifier.*`` for DistilBERT.

>>> save_head(model, out_dir, "sst2")
>>> set_head_(model, load_head(artifact.path, "subj"))   # model now predicts Subj's 2 labels
"""
from __future__ import annotations

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


def save_head(model, artifact_dir: Path, task: str) -> Path:
    from safetensors.torch import save_file

    path = head_path(artifact_dir, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(head_state(model), str(path), metadata={"task": task})
    return path


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


def set_head_(model, state: dict, num_labels: int | None = None) -> None:
    """Load a head into ``model`` in place, resizing linear layers whose shape differs."""
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
    if num_labels is not None:  # used by the loss only; logits follow the weights
        model.num_labels = model.config.num_labels = num_labels


def reinit_head_(model) -> None:
    """Fresh, seeded initialisation of the head (``set_seed`` first for reproducibility)."""
    prefix = model.base_model_prefix
    for name, child in model.named_children():
        if name != prefix:
            for m in child.modules():
                model._init_weights(m)

"""Weight sparsity: unstructured magnitude pruning and 2:4 semi-structured sparsity.

>>> sparsify_(model, SparsityConfig(kind="magnitude", sparsity=0.5))  # half of each Linear's weights -> 0
>>> sparsify_(model, SparsityConfig(kind="2:4"))  # 2 of every 4 consecutive inputs -> 0

Zeros are written into the dense weight in place: the model, its checkpoint and its ONNX
export keep their shapes and file sizes, and dense kernels (PyTorch, ONNX Runtime, cuBLAS)
multiply the zeros like any other value. So this stage changes accuracy, never time or
size, on every backend chainpress measures; ``speedup_expected`` says so for the report.
2:4 is the pattern Ampere+ sparse tensor cores can exploit, but only after the weight is
converted (``torch.sparse.to_sparse_semi_structured``), which this verb does not do.

A later fine-tune stage trains the zeros back (no mask is kept): sparsify after training.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from chain.errors import SpecError

from chain.arch import body_skip
from .walker import linear_layers

KINDS = ("magnitude", "2:4")


@dataclass
class SparsityConfig:
    kind: str = "magnitude"  # "magnitude" (unstructured, per layer) | "2:4" (semi-structured)
    sparsity: float = 0.5  # fraction of each Linear's weights set to zero; 2:4 is always 0.5
    # Glob patterns of Linear layers left dense. The classifier is tiny and most sensitive.
    skip: tuple[str, ...] = field(default_factory=lambda: ("classifier", "*.classifier"))

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SpecError(f"sparsify.kind must be one of {KINDS}, got {self.kind!r}")
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) or not 0 <= self.sparsity < 1:
            raise SpecError(f"sparsify.sparsity must be a fraction in [0, 1), got {self.sparsity!r}")
        if self.kind == "2:4" and self.sparsity != 0.5:
            raise SpecError(f"sparsify.sparsity is fixed at 0.5 for kind '2:4' (2 zeros in every 4), "
                            f"got {self.sparsity}; use kind: magnitude for other fractions")
        self.skip = tuple(self.skip)


def magnitude_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool mask (True = keep) zeroing exactly round(sparsity * numel) smallest-|w| entries."""
    k = int(round(sparsity * w.numel()))
    mask = torch.ones(w.numel(), dtype=torch.bool, device=w.device)
    if k:
        mask[w.detach().abs().flatten().argsort()[:k]] = False  # argsort breaks ties: exactly k
    return mask.view_as(w)


def two_four_mask(w: torch.Tensor) -> torch.Tensor:
    """Bool mask keeping the 2 largest |w| in every group of 4 along the input dim (K)."""
    n, k = w.shape
    groups = w.detach().abs().view(n, k // 4, 4)  # (N, K/4, 4)
    keep = groups.topk(2, dim=-1).indices  # (N, K/4, 2)
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.view(n, k)


@torch.no_grad()
def sparsify_(model: nn.Module, config: SparsityConfig = SparsityConfig(), filter_fn=None) -> dict:
    """Zero weights of eligible ``nn.Linear`` layers in place; return per-layer sparsity and skips."""
    layers, skipped = {}, {}
    for name, lin in linear_layers(model, config.skip + body_skip(model)[0], filter_fn):
        w = lin.weight
        if config.kind == "2:4":
            if w.shape[1] % 4:
                skipped[name] = f"in_features={w.shape[1]} is not a multiple of 4"
                continue
            mask = two_four_mask(w)
        else:
            mask = magnitude_mask(w, config.sparsity)
        w.mul_(mask)
        layers[name] = round(float((w == 0).float().mean()), 6)
    zeros = sum(float(s) * model.get_submodule(n).weight.numel() for n, s in layers.items())
    total = sum(model.get_submodule(n).weight.numel() for n in layers)
    return {"kind": config.kind, "layers": layers, "skipped": skipped,
            "sparsity": round(zeros / total, 6) if total else 0.0}


def speedup_expected(kind: str, backend: str = "any", device: str = "any", storage: str = "dense") -> dict:
    """Whether zeros from ``kind`` can make ``backend`` faster, and why: for the bench report.

    ``storage`` is how the weights reach the kernel; ``sparsify_`` always leaves them dense.
    """
    if kind not in KINDS:
        raise SpecError(f"unknown sparsity kind {kind!r}; known: {KINDS}")
    if storage == "dense":
        why = ("weights are stored dense and dense kernels (PyTorch, ONNX Runtime, cuBLAS; CPU or GPU) "
               "multiply zeros like any other value: same time and file size, only accuracy changes")
        return {"speedup_expected": False, "size_saving_expected": False, "why": why}
    if kind == "2:4" and storage == "semi-structured" and device == "cuda":
        return {"speedup_expected": True, "size_saving_expected": True,
                "why": "2:4 weights converted with torch.sparse.to_sparse_semi_structured run on sparse "
                       "tensor cores (Ampere or newer); the gain depends on shape and must be measured"}
    return {"speedup_expected": False, "size_saving_expected": storage != "dense",
            "why": f"no sparse kernel for {kind} sparsity stored as {storage} on {backend}/{device} in chainpress"}

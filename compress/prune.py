"""Structured pruning that shrinks matrices: attention heads, FFN neurons, whole layers.

``prune_(model, PruneConfig(heads=0.5, ffn=0.5))`` ranks structures by importance and
physically removes them, so the saved and exported model is smaller and faster (no
masks, no sparse formats). Heads go through Hugging Face's own ``prune_heads``
(recorded in ``config.pruned_heads`` and re-applied by ``from_pretrained``); FFN
neurons are removed uniformly per layer and ``config.intermediate_size`` shrinks, so a
pruned checkpoint is still a plain HF model that ``from_pretrained`` and the ONNX
exporter load.

Importance: ``l1`` (weight magnitude, no data) or ``taylor`` (|w * dL/dw| summed per
structure over task batches: first-order estimate of the loss change on removal).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from chain.errors import ModelError, SpecError


@dataclass
class PruneConfig:
    heads: float = 0.0  # fraction of attention heads removed in each layer
    ffn: float = 0.0  # fraction of FFN intermediate neurons removed in each layer
    drop_layers: list[int] = field(default_factory=list)  # encoder layers removed whole
    importance: str = "l1"  # "l1" | "taylor"
    taylor_batches: int = 16
    # Per-layer overrides by qualified name, e.g. {"bert.encoder.layer.0": {"heads": 0.0}}
    overrides: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("heads", "ffn"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise SpecError(f"prune.{name} must be a fraction in [0, 1), got {v!r}")
        if self.importance not in ("l1", "taylor"):
            raise SpecError(f"prune.importance must be 'l1' or 'taylor', got {self.importance!r}")
        for key, ov in self.overrides.items():
            bad = set(ov) - {"heads", "ffn"}
            if bad:
                raise SpecError(f"prune.overrides[{key!r}]: unknown keys {sorted(bad)}; use heads/ffn")


def _encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    base_name = getattr(model, "base_model_prefix", "")
    base = getattr(model, base_name, model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not hasattr(layers[0], "attention") or not hasattr(layers[0], "intermediate"):
        raise ModelError(f"{type(model).__name__} is not a BERT-family encoder; structured pruning "
                         "supports models with encoder.layer[i].attention/intermediate/output")
    return f"{base_name}.encoder.layer" if base_name else "encoder.layer", layers


def head_scores_l1(layer: nn.Module) -> torch.Tensor:
    """(H,) sum of |W| over each head's rows of Q, K, V and columns of the output projection."""
    att = layer.attention
    h, d = att.self.num_attention_heads, att.self.attention_head_size
    s = sum(m.weight.abs().view(h, d, -1).sum(dim=(1, 2)) for m in (att.self.query, att.self.key, att.self.value))
    return s + att.output.dense.weight.abs().view(-1, h, d).sum(dim=(0, 2))


def ffn_scores_l1(layer: nn.Module) -> torch.Tensor:
    """(I,) |W_in| row sums + |W_out| column sums per intermediate neuron."""
    return layer.intermediate.dense.weight.abs().sum(1) + layer.output.dense.weight.abs().sum(0)


def taylor_scores(model: nn.Module, batches: Iterable[dict], n_batches: int) -> tuple[list, list]:
    """Per layer: (H,) head and (I,) neuron scores, sum over batches of |sum(w * grad)| per structure."""
    _, layers = _encoder_layers(model)
    was_training = model.training
    model.eval()  # no dropout: scores should depend on the data only
    heads = [torch.zeros(L.attention.self.num_attention_heads) for L in layers]
    ffn = [torch.zeros(L.intermediate.dense.out_features) for L in layers]
    for i, batch in enumerate(batches):
        if i >= n_batches:
            break
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        for j, L in enumerate(layers):
            att = L.attention
            h, d = att.self.num_attention_heads, att.self.attention_head_size
            s = sum((m.weight * m.weight.grad).view(h, d, -1).sum(dim=(1, 2)) +
                    (m.bias * m.bias.grad).view(h, d).sum(1) for m in (att.self.query, att.self.key, att.self.value))
            o = att.output.dense
            s = s + (o.weight * o.weight.grad).view(-1, h, d).sum(dim=(0, 2))
            heads[j] += s.detach().abs()
            up, down = L.intermediate.dense, L.output.dense
            n = (up.weight * up.weight.grad).sum(1) + (up.bias * up.bias.grad) + (down.weight * down.weight.grad).sum(0)
            ffn[j] += n.detach().abs()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return heads, ffn


def _slice_linear(lin: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    w = lin.weight.index_select(dim, index).clone()
    b = lin.bias.clone() if dim == 1 else lin.bias.index_select(0, index).clone()
    new = nn.Linear(w.shape[1], w.shape[0], bias=True, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        new.bias.copy_(b)
    return new


def _n_remove(total: int, frac: float) -> int:
    return min(total - 1, int(round(total * frac)))  # always keep one


def prune_(model: nn.Module, config: PruneConfig,
           batches: Callable[[], Iterable[dict]] | None = None) -> dict:
    """Prune ``model`` in place; return what was removed. ``batches`` feeds Taylor scoring."""
    prefix, layers = _encoder_layers(model)
    if config.importance == "taylor":
        if batches is None:
            raise SpecError("prune.importance='taylor' needs task batches; pass batches= or use 'l1'")
        t_heads, t_ffn = taylor_scores(model, batches(), config.taylor_batches)
    heads_to_prune, ffn_keep, report = {}, None, {"heads": {}, "ffn_kept": {}, "dropped_layers": []}
    for j, L in enumerate(layers):
        ov = config.overrides.get(f"{prefix}.{j}", {})
        h_frac, f_frac = ov.get("heads", config.heads), ov.get("ffn", config.ffn)
        n_heads = L.attention.self.num_attention_heads
        hs = t_heads[j] if config.importance == "taylor" else head_scores_l1(L)
        k = _n_remove(n_heads, h_frac)
        if k:
            # indices are positions among the *current* heads; HF maps them to original ids
            heads_to_prune[j] = sorted(hs.argsort()[:k].tolist())
        fs = t_ffn[j] if config.importance == "taylor" else ffn_scores_l1(L)
        n_keep = fs.numel() - _n_remove(fs.numel(), f_frac)
        if ffn_keep is not None and n_keep != ffn_keep:
            raise SpecError("FFN pruning must keep the same width in every layer (HF configs store one "
                            "intermediate_size); give the same ffn fraction to every layer")
        ffn_keep = n_keep
        if n_keep < fs.numel():
            keep = fs.argsort(descending=True)[:n_keep].sort().values
            L.intermediate.dense = _slice_linear(L.intermediate.dense, keep, 0)
            L.output.dense = _slice_linear(L.output.dense, keep, 1)
        report["ffn_kept"][j] = n_keep
    if heads_to_prune:
        _prune_heads_by_position(layers, heads_to_prune)
        report["heads"] = {j: len(v) for j, v in heads_to_prune.items()}
    if ffn_keep is not None:
        model.config.intermediate_size = ffn_keep
    if config.drop_layers:
        report["dropped_layers"] = _drop_layers(model, layers, config.drop_layers)
    sync_pruned_heads(model)
    report["params"] = sum(p.numel() for p in model.parameters())
    return report


def _prune_heads_by_position(layers: nn.ModuleList, heads: dict[int, list[int]]) -> None:
    # HF's prune_heads takes *original* head ids; translate positions among remaining heads.
    for j, positions in heads.items():
        att = layers[j].attention
        total = att.self.num_attention_heads + len(att.pruned_heads)
        remaining = [h for h in range(total) if h not in att.pruned_heads]
        att.prune_heads([remaining[p] for p in positions])


def _drop_layers(model: nn.Module, layers: nn.ModuleList, drop: list[int]) -> list[int]:
    n = len(layers)
    bad = [i for i in drop if not 0 <= i < n]
    if bad or len(set(drop)) >= n:
        raise SpecError(f"prune.drop_layers {drop}: layers are 0..{n - 1} and at least one must stay")
    keep = [i for i in range(n) if i not in set(drop)]
    kept = nn.ModuleList(layers[i] for i in keep)
    for new_i, L in enumerate(kept):  # attention caches index layers by position
        if hasattr(L.attention.self, "layer_idx"):
            L.attention.self.layer_idx = new_i
    model.get_submodule(_encoder_layers(model)[0].rsplit(".", 1)[0]).layer = kept
    model.config.num_hidden_layers = len(keep)
    return sorted(set(drop))


def sync_pruned_heads(model: nn.Module) -> None:
    """Write each layer's pruned heads into ``config.pruned_heads`` (what from_pretrained re-applies)."""
    _, layers = _encoder_layers(model)
    model.config.pruned_heads = {j: sorted(L.attention.pruned_heads) for j, L in enumerate(layers)
                                 if L.attention.pruned_heads}

"""Structured pruning that shrinks matrices: attention heads, FFN neurons, whole layers.

``prune_(model, PruneConfig(heads=0.5, ffn=0.5))`` ranks structures by importance and
physically removes them, so the saved and exported model is smaller and faster (no
masks, no sparse formats). Where each block's Q/K/V/O and FFN live comes from the
architecture's declaration (``chain.arch``), so one code path prunes BERT, RoBERTa,
XLM-R, ELECTRA, DistilBERT, MPNet, DeBERTa-v2, Llama and Qwen2:

* heads of architectures whose HF model implements ``prune_heads`` go through it
  (recorded in ``config.pruned_heads`` and re-applied by ``from_pretrained``, so layers
  may differ); the others (DeBERTa-v2, Llama, Qwen2) are sliced here, the same count in
  every layer, and the config's head count (and head size) shrinks;
* grouped KV heads (Llama, Qwen2) are pruned as groups: one K/V head with the query
  heads that read it;
* FFN neurons are removed uniformly per layer (gate and up rows with the down column)
  and the config's intermediate size shrinks.

A pruned checkpoint is still a plain HF model that ``from_pretrained`` and the ONNX
exporter load. Importance: ``l1`` (weight magnitude, no data) or ``taylor``
(|w * dL/dw| summed per structure over task batches: first-order estimate of the loss
change on removal).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from chain.errors import ModelError, SpecError

from chain.arch import Arch, arch_for, check_stage


@dataclass
class PruneConfig:
    heads: float = 0.0  # fraction of attention heads (KV groups for grouped attention) removed per layer
    ffn: float = 0.0  # fraction of FFN intermediate neurons removed in each layer
    drop_layers: list[int] = field(default_factory=list)  # layers removed whole, by index
    # fraction of layers removed whole, the top ones (below the head): of the strategies Sajjad et
    # al. compare ("On the Effect of Dropping Layers of Pre-trained Transformer Models", 2020) top
    # dropping kept accuracy best; a fraction fits every depth, which the search ladder needs
    layers: float = 0.0
    importance: str = "l1"  # "l1" | "taylor"
    taylor_batches: int = 16
    # Per-layer overrides by qualified name, e.g. {"bert.encoder.layer.0": {"heads": 0.0}}
    overrides: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("heads", "ffn", "layers"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise SpecError(f"prune.{name} must be a fraction in [0, 1), got {v!r}")
        if self.importance not in ("l1", "taylor"):
            raise SpecError(f"prune.importance must be 'l1' or 'taylor', got {self.importance!r}")
        for key, ov in self.overrides.items():
            bad = set(ov) - {"heads", "ffn"}
            if bad:
                raise SpecError(f"prune.overrides[{key!r}]: unknown keys {sorted(bad)}; use heads/ffn")


@dataclass
class _Att:
    """One block's attention as the table declares it: groups = K/V heads (= heads without GQA)."""
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    d: int  # head size
    groups: int
    rep: int  # query heads per group

    def scores(self, grad: bool) -> torch.Tensor:
        """(groups,) importance: |W| (or |sum w * dL/dw|) over each group's Q/K/V rows and O columns."""
        g, r, d = self.groups, self.rep, self.d
        f = (lambda p: p * p.grad) if grad else (lambda p: p.abs())
        s = f(self.q.weight).view(g, r * d, -1).sum(dim=(1, 2))
        s = s + sum(f(m.weight).view(g, d, -1).sum(dim=(1, 2)) for m in (self.k, self.v))
        for m, rows in ((self.q, r * d), (self.k, d), (self.v, d)):
            if m.bias is not None and grad:
                s = s + f(m.bias).view(g, rows).sum(1)
        return s + f(self.o.weight).view(-1, g, r * d).sum(dim=(0, 2))


def blocks(model: nn.Module) -> tuple[str, nn.ModuleList, Arch]:
    """(qualified name, ModuleList, arch) of the model's transformer blocks."""
    try:
        arch = arch_for(model)
    except ModelError as e:
        raise ModelError(f"{type(model).__name__} is not a supported model for structured pruning: {e}") from None
    path = arch.full(model, arch.blocks)
    return path, model.get_submodule(path), arch


def _head_dim(model: nn.Module, arch: Arch) -> int:
    cfg = model.config
    d = getattr(cfg, arch.attention.head_dim_attr, None) if arch.attention.head_dim_attr else None
    return d or cfg.hidden_size // cfg.num_attention_heads


def attention(model: nn.Module, arch: Arch, block: nn.Module) -> _Att:
    a = arch.attention
    q, k, v, o = (block.get_submodule(p) for p in (a.q, a.k, a.v, a.o))
    d = _head_dim(model, arch)
    groups = k.out_features // d
    return _Att(q, k, v, o, d, groups, q.out_features // d // groups)


def ffn_scores(arch: Arch, block: nn.Module, grad: bool = False) -> torch.Tensor:
    """(I,) per intermediate neuron: |W_in| rows (gate and up) + |W_out| columns (or Taylor terms)."""
    f = (lambda p: p * p.grad) if grad else (lambda p: p.abs())
    s = 0
    for p in arch.ffn.up:
        up = block.get_submodule(p)
        s = s + f(up.weight).sum(1) + (f(up.bias) if grad and up.bias is not None else 0)
    return s + f(block.get_submodule(arch.ffn.down).weight).sum(0)


def head_scores_l1(model: nn.Module, layer: int) -> torch.Tensor:
    """(groups,) L1 importance of layer ``layer``'s heads (KV groups with grouped attention)."""
    _, layers, arch = blocks(model)
    return attention(model, arch, layers[layer]).scores(grad=False)


def taylor_scores(model: nn.Module, batches: Iterable[dict], n_batches: int) -> tuple[list, list]:
    """Per layer: (groups,) head and (I,) neuron scores, sum over batches of |sum(w * grad)| per structure."""
    _, layers, arch = blocks(model)
    was_training = model.training
    model.eval()  # no dropout: scores should depend on the data only
    atts = [attention(model, arch, L) for L in layers]
    heads = [torch.zeros(a.groups) for a in atts]
    ffn = [torch.zeros(L.get_submodule(arch.ffn.down).in_features) for L in layers]
    for i, batch in enumerate(batches):
        if i >= n_batches:
            break
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        for j, L in enumerate(layers):
            heads[j] += atts[j].scores(grad=True).detach().abs()
            ffn[j] += ffn_scores(arch, L, grad=True).detach().abs()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return heads, ffn


def _slice_linear(lin: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    w = lin.weight.index_select(dim, index).clone()
    has_bias = lin.bias is not None
    new = nn.Linear(w.shape[1], w.shape[0], bias=has_bias, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if has_bias:
            new.bias.copy_(lin.bias if dim == 1 else lin.bias.index_select(0, index))
    return new


def _set(block: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, attr, new)


def _n_remove(total: int, frac: float) -> int:
    return min(total - 1, int(round(total * frac)))  # always keep one


def prune_(model: nn.Module, config: PruneConfig,
           batches: Callable[[], Iterable[dict]] | None = None) -> dict:
    """Prune ``model`` in place; return what was removed. ``batches`` feeds Taylor scoring."""
    prefix, layers, arch = blocks(model)
    check_stage("prune", model.config, config)
    report = {"heads": {}, "ffn_kept": {}, "dropped_layers": []}
    if not arch.shared_layers:  # check_stage refused heads/FFN pruning of a shared layer
        _prune_structures(model, arch, prefix, layers, config, batches, report)
    drop = layers_to_drop(getattr(model.config, arch.layers_attr), config)
    if drop:
        report["dropped_layers"] = _drop_layers(model, arch, drop)
    sync_pruned_heads(model)
    report["params"] = sum(p.numel() for p in model.parameters())
    return report


def _prune_structures(model, arch: Arch, prefix: str, layers, config: PruneConfig, batches, report: dict) -> None:
    if config.importance == "taylor":
        if batches is None:
            raise SpecError("prune.importance='taylor' needs task batches; pass batches= or use 'l1'")
        t_heads, t_ffn = taylor_scores(model, batches(), config.taylor_batches)
    heads_to_prune, ffn_keep = {}, None
    for j, L in enumerate(layers):
        ov = config.overrides.get(f"{prefix}.{j}", {})
        h_frac, f_frac = ov.get("heads", config.heads), ov.get("ffn", config.ffn)
        att = attention(model, arch, L)
        hs = t_heads[j] if config.importance == "taylor" else att.scores(grad=False)
        k = _n_remove(att.groups, h_frac)
        if k:
            # indices are positions among the *current* heads (or groups)
            heads_to_prune[j] = sorted(hs.argsort()[:k].tolist())
        fs = t_ffn[j] if config.importance == "taylor" else ffn_scores(arch, L)
        n_keep = fs.numel() - _n_remove(fs.numel(), f_frac)
        if ffn_keep is not None and n_keep != ffn_keep:
            raise SpecError("FFN pruning must keep the same width in every layer (HF configs store one "
                            "intermediate size); give the same ffn fraction to every layer")
        ffn_keep = n_keep
        if n_keep < fs.numel():
            keep = fs.argsort(descending=True)[:n_keep].sort().values
            for p in arch.ffn.up:
                _set(L, p, _slice_linear(L.get_submodule(p), keep, 0))
            _set(L, arch.ffn.down, _slice_linear(L.get_submodule(arch.ffn.down), keep, 1))
        report["ffn_kept"][j] = n_keep
    if heads_to_prune:
        if arch.attention.hf_prune:
            _prune_heads_by_position(arch, layers, heads_to_prune)
        else:
            _slice_heads(model, arch, layers, heads_to_prune)
        report["heads"] = {j: len(v) for j, v in heads_to_prune.items()}
    if ffn_keep is not None:
        setattr(model.config, arch.ffn.size_attr, ffn_keep)


def _prune_heads_by_position(arch: Arch, layers: nn.ModuleList, heads: dict[int, list[int]]) -> None:
    # HF's prune_heads takes *original* head ids; translate positions among remaining heads.
    for j, positions in heads.items():
        att = layers[j].get_submodule(arch.attention.hf_prune)
        total = _current_heads(att) + len(att.pruned_heads)
        remaining = [h for h in range(total) if h not in att.pruned_heads]
        att.prune_heads([remaining[p] for p in positions])


def _current_heads(att: nn.Module) -> int:
    for owner in (att, getattr(att, "self", None), getattr(att, "attn", None)):
        for name in ("num_attention_heads", "n_heads"):
            if owner is not None and isinstance(getattr(owner, name, None), int):
                return getattr(owner, name)
    raise ModelError(f"{type(att).__name__}: cannot read its head count")


def _slice_heads(model: nn.Module, arch: Arch, layers: nn.ModuleList, heads: dict[int, list[int]]) -> None:
    """Remove the same number of heads (KV groups) from every layer by slicing Q/K/V rows and O columns."""
    counts = {len(v) for v in heads.values()}
    if len(counts) != 1 or len(heads) != len(layers):
        raise SpecError(f"prune: {arch.name} stores one head count for every layer; prune the same number of "
                        "heads in each (one `heads` fraction, no per-layer overrides)")
    a = arch.attention
    for j, drop in heads.items():
        block = layers[j]
        att = attention(model, arch, block)
        keep_g = [g for g in range(att.groups) if g not in set(drop)]
        q_rows = torch.tensor([g * att.rep * att.d + i for g in keep_g for i in range(att.rep * att.d)])
        kv_rows = torch.tensor([g * att.d + i for g in keep_g for i in range(att.d)])
        _set(block, a.q, _slice_linear(att.q, q_rows, 0))
        _set(block, a.k, _slice_linear(att.k, kv_rows, 0))
        _set(block, a.v, _slice_linear(att.v, kv_rows, 0))
        _set(block, a.o, _slice_linear(att.o, q_rows, 1))
        for p in a.extra_rows:  # same layout as Q (no grouping in DeBERTa)
            try:
                extra = block.get_submodule(p)
            except AttributeError:
                continue
            _set(block, p, _slice_linear(extra, q_rows, 0))
        owner = block.get_submodule(a.q.rpartition(".")[0])
        n_heads, n_groups = len(keep_g) * att.rep, len(keep_g)
        for name, value in (("num_attention_heads", n_heads), ("num_heads", n_heads),
                            ("num_key_value_heads", n_groups), ("all_head_size", n_heads * att.d)):
            if isinstance(getattr(owner, name, None), int):
                setattr(owner, name, value)
    cfg, d = model.config, att.d
    setattr(cfg, a.heads_attr, n_heads)
    if a.kv_heads_attr:
        setattr(cfg, a.kv_heads_attr, n_groups)
    setattr(cfg, a.head_dim_attr, d)


def layers_to_drop(n: int, config: PruneConfig) -> list[int]:
    """``drop_layers`` and the top ``round(n * layers)`` of ``n`` layers (one always stays)."""
    k = _n_remove(n, config.layers) if config.layers else 0
    return sorted(set(config.drop_layers) | set(range(n - k, n)))


def _drop_layers(model: nn.Module, arch: Arch, drop: list[int]) -> list[int]:
    cfg = model.config
    n = getattr(cfg, arch.layers_attr)
    bad = [i for i in drop if not 0 <= i < n]
    if bad or len(set(drop)) >= n:
        raise SpecError(f"prune.drop_layers {drop}: layers are 0..{n - 1} and at least one must stay")
    keep = [i for i in range(n) if i not in set(drop)]
    if arch.shared_layers:  # one block applied n times: dropping depth = applying it fewer times
        if getattr(cfg, "num_hidden_groups", 1) != 1:
            raise SpecError(f"prune.drop_layers: {arch.name} with num_hidden_groups > 1 is not supported")
    else:
        prefix, layers, _ = blocks(model)
        kept = nn.ModuleList(layers[i] for i in keep)
        for new_i, L in enumerate(kept):  # attention caches index layers by position
            for m in L.modules():
                if isinstance(getattr(m, "layer_idx", None), int):
                    m.layer_idx = new_i
        _set(model, prefix, kept)
    types = getattr(cfg, "layer_types", None)
    if isinstance(types, list) and len(types) == n:  # Qwen2: attention kind per layer
        cfg.layer_types = [types[i] for i in keep]
    setattr(cfg, arch.layers_attr, len(keep))
    return sorted(set(drop))


def sync_pruned_heads(model: nn.Module) -> None:
    """Write each layer's pruned heads into ``config.pruned_heads`` (what from_pretrained re-applies)."""
    _, layers, arch = blocks(model)
    if not arch.attention.hf_prune:
        return
    atts = [L.get_submodule(arch.attention.hf_prune) for L in layers]
    model.config.pruned_heads = {j: sorted(a.pruned_heads) for j, a in enumerate(atts) if a.pruned_heads}

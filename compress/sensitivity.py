"""Accuracy-aware quantization: measure each Linear's cost, keep the costliest in fp32.

>>> table = layer_sensitivity(model, eval_fn, AccuracyAwareConfig(scheme="int8"))
>>> report = accuracy_aware_quantize_(model, AccuracyAwareConfig(budget=0.005), eval_fn)
>>> report["kept_fp32"]          # e.g. ['bert.encoder.layer.5.output.dense']

``eval_fn(model) -> float`` is any higher-is-better metric (accuracy on a dev split).
Sensitivity is measured one layer at a time (only that Linear quantized, all others
fp32): L + 1 evaluations. The greedy step then quantizes everything and restores fp32
layers in sensitivity order, re-measuring after each, until the measured drop is within
``budget``. Per-layer costs do not add up exactly (errors interact), which is why the
whole model is re-measured after every restore instead of summing the table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from chain.errors import SpecError

from .quantize import DEFAULT_SKIP, Int4WeightOnlyConfig, Int8DynamicConfig, body_skip, quantize_
from .walker import linear_layers, set_module

SCHEMES = ("int8", "int4")


@dataclass
class AccuracyAwareConfig:
    scheme: str = "int8"  # "int8" (dynamic, fbgemm) | "int4" (weight-only, group-wise)
    group_size: int = 32  # int4 only
    budget: float = 0.01  # largest allowed metric drop vs fp32, in metric units (0.01 = 1 accuracy point)
    max_kept: int | None = None  # at most this many layers restored to fp32; None = as many as needed
    skip: tuple[str, ...] = DEFAULT_SKIP  # never quantized, besides the architecture's head (always float)
    # Stage only: first N examples of the task's dev split are the metric (L + 2 + kept evaluations).
    eval_samples: int | None = 512
    # Stage only: embedding tables stored int8 by save_int8 (storage saving; re-measured after saving).
    # None = the architecture's token-embedding table(s) (chain.arch); () = none.
    embeddings: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise SpecError(f"quantize_accuracy_aware.scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)) or self.budget < 0:
            raise SpecError(f"quantize_accuracy_aware.budget must be a non-negative metric drop, got {self.budget!r}")
        if self.max_kept is not None and (isinstance(self.max_kept, bool) or not isinstance(self.max_kept, int)
                                          or self.max_kept < 0):
            raise SpecError(f"quantize_accuracy_aware.max_kept must be a non-negative integer or null, "
                            f"got {self.max_kept!r}")
        if self.scheme == "int4":
            try:
                Int4WeightOnlyConfig(self.group_size)
            except ValueError as e:
                raise SpecError(f"quantize_accuracy_aware.group_size: {e}") from None
        if self.eval_samples is not None and (isinstance(self.eval_samples, bool) or
                                              not isinstance(self.eval_samples, int) or self.eval_samples <= 0):
            raise SpecError(f"quantize_accuracy_aware.eval_samples must be a positive integer or null, "
                            f"got {self.eval_samples!r}")
        self.skip = tuple(self.skip)
        self.embeddings = None if self.embeddings is None else tuple(self.embeddings)

    def quant_config(self):
        return Int8DynamicConfig() if self.scheme == "int8" else Int4WeightOnlyConfig(self.group_size)


def layer_sensitivity(model: nn.Module, eval_fn: Callable[[nn.Module], float],
                      config: AccuracyAwareConfig = AccuracyAwareConfig(), baseline: float | None = None) -> dict:
    """Quantize one Linear at a time; return the fp32 metric and rows sorted by drop (largest first).

    ``baseline``: the fp32 metric if already measured (one evaluation saved per extra scheme).
    """
    baseline = float(eval_fn(model)) if baseline is None else float(baseline)
    rows = []
    skip = config.skip + body_skip(model)[0]
    for name, lin in list(linear_layers(model, skip)):
        quantize_(model, config.quant_config(), skip=skip, filter_fn=lambda m, n, name=name: n == name)
        metric = float(eval_fn(model))
        set_module(model, name, lin)  # the original module: bit-exact fp32 again
        rows.append({"layer": name, "metric": metric, "drop": baseline - metric})
    rows.sort(key=lambda r: r["drop"], reverse=True)
    return {"baseline": baseline, "layers": rows}


def accuracy_fn(tokenizer, texts: list[str], labels: list[int], batch_size: int = 32,
                max_length: int = 128) -> Callable[[nn.Module], float]:
    """``eval_fn`` for classification: accuracy on pre-tokenized, length-sorted batches."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches = []
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        enc = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        batches.append((dict(enc), torch.tensor([labels[i] for i in rows])))

    @torch.inference_mode()
    def evaluate(model: nn.Module) -> float:
        model.eval()
        hits = sum(int((model(**enc).logits.argmax(-1) == y).sum()) for enc, y in batches)
        return hits / len(texts)

    return evaluate


def accuracy_aware_quantize_(model: nn.Module, config: AccuracyAwareConfig,
                             eval_fn: Callable[[nn.Module], float], sensitivity: dict | None = None) -> dict:
    """Quantize every eligible Linear, then restore the most sensitive ones to fp32 until the
    measured drop is within ``config.budget``; return the report (``kept_fp32`` in restore order)."""
    sens = sensitivity or layer_sensitivity(model, eval_fn, config)
    skip = config.skip + body_skip(model)[0]
    originals = dict(linear_layers(model, skip))
    quantize_(model, config.quant_config(), skip=skip)
    metric = float(eval_fn(model))
    steps = [{"restored": None, "metric": metric, "drop": sens["baseline"] - metric}]
    kept: list[str] = []
    for row in sens["layers"]:
        if sens["baseline"] - metric <= config.budget:
            break
        if config.max_kept is not None and len(kept) >= config.max_kept:
            break
        set_module(model, row["layer"], originals[row["layer"]])
        kept.append(row["layer"])
        metric = float(eval_fn(model))
        steps.append({"restored": row["layer"], "metric": metric, "drop": sens["baseline"] - metric})
    drop = sens["baseline"] - metric
    return {"scheme": config.scheme, "budget": config.budget, "baseline": sens["baseline"], "metric": metric,
            "drop": drop, "within_budget": drop <= config.budget, "kept_fp32": kept,
            "quantized": [n for n in originals if n not in kept], "steps": steps, "sensitivity": sens["layers"]}


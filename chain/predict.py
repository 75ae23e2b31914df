"""Predictors: one call signature (a tokenized batch in, logits out) for every runtime.

Tokenization happens before timing, so latency figures are model time only. Which
predictor runs an artifact is ``chain.runtime``'s business.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass
class Predictor:
    name: str
    backend: str  # "pytorch" | "pytorch+compile" | "pytorch+triton" | "onnxruntime"
    fn: Callable[[dict], np.ndarray]

    def __call__(self, enc: dict) -> np.ndarray:
        return self.fn(enc)


def torch_predictor(model: torch.nn.Module, name: str, backend: str = "pytorch") -> Predictor:
    model.eval()
    device = next(model.parameters()).device

    def run(enc: dict) -> np.ndarray:
        with torch.inference_mode():
            out = model(**{k: torch.from_numpy(v).to(device) for k, v in enc.items()})
        return out.logits.float().cpu().numpy()

    return Predictor(name, backend, run)


def encode_batches(tokenizer, texts: list[str], batch_size: int, max_length: int = 128,
                   sort_by_length: bool = False) -> list[tuple[list[int], dict]]:
    """[(original indices, numpy encoding)] with padding to each batch's longest text."""
    order = list(range(len(texts)))
    if sort_by_length:
        order.sort(key=lambda i: len(texts[i]))
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                        return_tensors="np")
        out.append((idx, {k: v.astype(np.int64) for k, v in enc.items()}))
    return out


def accuracy(predictor: Predictor, batches, labels: list[int]) -> float:
    return scores(predictor, batches, labels)["accuracy"]


def scores(predictor: Predictor, batches, labels: list[int]) -> dict:
    """Accuracy, and how many distinct classes the model predicted: 1 means it answers one class
    whatever the input (its accuracy is then that class's share, not a measure of the model)."""
    correct, seen = 0, set()
    for idx, enc in batches:
        pred = [int(p) for p in predictor(enc).argmax(-1)]
        seen.update(pred)
        correct += sum(p == labels[i] for p, i in zip(pred, idx))
    return {"accuracy": correct / len(labels), "predicted_classes": len(seen)}


def hf_predictor(artifact, threads: int, trust_remote_code: bool = False) -> Predictor:
    """A PyTorch artifact (``hf``, or a registered format such as ``torch-int8``) in eager mode."""
    from .model import load_model

    torch.set_num_threads(threads)
    return torch_predictor(load_model(artifact, trust_remote_code=trust_remote_code), artifact.name)

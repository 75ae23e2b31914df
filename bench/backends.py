"""Predictors: one call signature (a tokenized batch in, logits out) per backend.

Tokenization happens before timing, so latency figures are model time only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from chain.artifact import Artifact


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


def load_predictor(artifact: Artifact, threads: int, trust_remote_code: bool = False) -> Predictor:
    if artifact.format == "onnx":
        from compress.onnx_export import onnx_logits, ort_session

        sess = ort_session(artifact.path / "model.onnx", threads)
        return Predictor(artifact.name, "onnxruntime", lambda enc: onnx_logits(sess, enc))
    from chain.model import load_model

    torch.set_num_threads(threads)
    model = load_model(artifact, trust_remote_code=trust_remote_code)
    if artifact.manifest.get("runtime") == "torch.compile":  # the torch-compile peer (bench/peers.py)
        from .peers import TorchCompileConfig, compile_model

        model.eval()
        model = compile_model(model, TorchCompileConfig(**artifact.manifest.get("compile", {})))
        return torch_predictor(model, artifact.name, backend="pytorch+compile")
    if artifact.manifest.get("runtime") == "triton-kernels":  # kernels/stage.py; CUDA only
        from kernels.stage import load_patched

        return torch_predictor(load_patched(model, artifact.manifest.get("kernels", {})), artifact.name,
                               backend="pytorch+triton")
    return torch_predictor(model, artifact.name)


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
    correct = 0
    for idx, enc in batches:
        pred = predictor(enc).argmax(-1)
        correct += int(sum(int(p) == labels[i] for p, i in zip(pred, idx)))
    return correct / len(labels)

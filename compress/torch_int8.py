"""int8 dynamic quantization of a PyTorch model, stored in chainpress' int8 format.

Weights are quantized once with ``compress.formats.quantize_int8`` (symmetric,
per-channel) and executed by PyTorch's fbgemm/x86 dynamic-int8 linear; the same
``qweight``/``scales`` tensors are what the Triton weight-only int8 kernel reads.
On disk: ``model.safetensors`` holds every non-quantized tensor plus ``<layer>.qweight``
(int8) and ``<layer>.scales`` per quantized linear, so the artifact is ~4x smaller than
fp32 for the linear layers and loads without pickle.
"""
from __future__ import annotations

import fnmatch
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .formats import Int8Weight, quantize_int8
from .walker import linear_layers, set_module


@dataclass
class Int8DynamicConfig:
    # Glob patterns of linear layers kept in fp32. The classifier is tiny and most sensitive.
    skip: tuple[str, ...] = ("classifier", "*.classifier")
    # Embedding tables stored as per-row int8 and dequantized on load: a storage saving
    # only (PyTorch has no fast int8 gather), but MiniLM's word embeddings are half its size.
    embeddings: tuple[str, ...] = ("*word_embeddings",)

    def __post_init__(self) -> None:
        self.skip = tuple(self.skip)
        self.embeddings = tuple(self.embeddings)


def _embedding_names(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Embedding) and any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _dq_linear(w: Int8Weight, bias: torch.Tensor | None) -> nn.Module:
    with warnings.catch_warnings():  # torch.ao is deprecated in favour of torchao, still the fbgemm path
        warnings.simplefilter("ignore")
        from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantLinear

        n, k = w.qweight.shape
        mod = DynamicQuantLinear(k, n, bias_=bias is not None, dtype=torch.qint8)
        qw = torch._make_per_channel_quantized_tensor(
            w.qweight, w.scales.double(), torch.zeros(n, dtype=torch.long), 0)
        mod.set_weight_bias(qw, None if bias is None else bias.detach().float())
    return mod


def quantize_int8_dynamic_(model: nn.Module, config: Int8DynamicConfig = Int8DynamicConfig()) -> dict[str, Int8Weight]:
    """Replace eligible ``nn.Linear`` layers in place; return the quantized weights by name."""
    weights = {}
    for name, lin in linear_layers(model, config.skip):
        w = quantize_int8(lin.weight)
        set_module(model, name, _dq_linear(w, lin.bias))
        weights[name] = w
    return weights


def save_int8(model_fp32: nn.Module, out_dir: Path, config: Int8DynamicConfig) -> dict:
    """Quantize a copy's linear weights and write the int8 artifact files; returns a summary."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model_fp32.state_dict().items()}
    names = []
    for name, lin in linear_layers(model_fp32, config.skip):
        w = quantize_int8(lin.weight)
        del state[f"{name}.weight"]
        state[f"{name}.qweight"] = w.qweight.contiguous()
        state[f"{name}.scales"] = w.scales.contiguous()
        names.append(name)
    embeddings = _embedding_names(model_fp32, config.embeddings)
    for name in embeddings:
        w = quantize_int8(state.pop(f"{name}.weight"))  # per-row scales
        state[f"{name}.qweight"], state[f"{name}.scales"] = w.qweight.contiguous(), w.scales.contiguous()
    save_file(state, str(out_dir / "model.safetensors"))
    model_fp32.config.save_pretrained(out_dir)
    (out_dir / "int8_layers.json").write_text(json.dumps({"linear": names, "embedding": embeddings}, indent=1))
    return {"quantized_layers": len(names), "quantized_embeddings": embeddings}


def load_int8(artifact) -> nn.Module:
    """Rebuild the model from config, then swap in dynamic-int8 linears from the stored codes."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = Path(artifact.path)
    cfg = AutoConfig.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_config(cfg)
    state = load_file(str(path / "model.safetensors"))
    layout = json.loads((path / "int8_layers.json").read_text())
    names = layout["linear"]
    for n in layout["embedding"]:
        state[f"{n}.weight"] = Int8Weight(state.pop(f"{n}.qweight"), state.pop(f"{n}.scales")).dequantize()
    codes = {n: Int8Weight(state.pop(f"{n}.qweight"), state.pop(f"{n}.scales")) for n in names}
    missing, unexpected = model.load_state_dict(state, strict=False)
    expected_missing = {f"{n}.weight" for n in names}
    if set(missing) - expected_missing or unexpected:
        raise ValueError(f"{path}: int8 checkpoint does not match its config "
                         f"(missing {sorted(set(missing) - expected_missing)}, unexpected {unexpected})")
    for n in names:
        bias = model.get_submodule(n).bias
        set_module(model, n, _dq_linear(codes[n], bias))
    return model.eval()

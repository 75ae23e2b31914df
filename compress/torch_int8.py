"""int8 dynamic quantization of a PyTorch model, stored in chainpress' int8 format.

Weights are quantized once with ``compress.formats.quantize_int8`` (symmetric,
per-channel) and executed by PyTorch's fbgemm/x86 dynamic-int8 linear; the same
``qweight``/``scales`` tensors are what the Triton weight-only int8 kernel reads.
Which modules are linear, which form the head (kept float) and which embedding tables
exist comes from the architecture's declaration (``chain.arch``): GPT-2's ``Conv1D``
is covered like ``nn.Linear``.

On disk: ``model-int8.safetensors`` holds every non-quantized tensor plus
``<layer>.qweight`` (int8) and ``<layer>.scales`` per quantized layer, ``int8_layers.json``
the layout. There is deliberately no ``model.safetensors``: plain
``AutoModelForSequenceClassification.from_pretrained`` on the directory raises (no
weights file) instead of silently random-initialising every quantized Linear; load it
with ``load_int8`` (``chain.model.load_model`` does).
"""
from __future__ import annotations

import fnmatch
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from chain.errors import ModelError

from chain.arch import Arch, arch_for, head_skip
from .formats import Int8Weight, quantize_int8
from .walker import as_linear, linear_layers, set_module

WEIGHTS = "model-int8.safetensors"
HEAD_REASON = "head: kept float (tiny, the most sensitive layer; chain.heads reads its weights)"


@dataclass
class Int8DynamicConfig:
    # Glob patterns of linear layers kept in fp32, besides the architecture's head (always float;
    # the default names BERT's head again, as specs written before chain.arch did).
    skip: tuple[str, ...] = ("classifier", "*.classifier")
    # Embedding tables stored as per-row int8 and dequantized on load: a storage saving
    # only (PyTorch has no fast int8 gather), but MiniLM's word embeddings are half its size.
    # None = the architecture's token-embedding table(s); () = none.
    embeddings: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.skip = tuple(self.skip)
        self.embeddings = None if self.embeddings is None else tuple(self.embeddings)


def plan_int8(model: nn.Module, config: Int8DynamicConfig) -> tuple[list[str], dict[str, str], Arch]:
    """(linear-like layers to quantize, {float layer: why}, arch); raises if only the head would go int8."""
    arch = arch_for(model)
    heads = head_skip(arch)
    names, float_layers = [], {}
    for name, _ in linear_layers(model, kinds=arch.linear_kinds):
        pat = next((p for p in config.skip if fnmatch.fnmatchcase(name, p)), None)
        if any(fnmatch.fnmatchcase(name, p) for p in heads):
            float_layers[name] = HEAD_REASON
        elif pat is not None:
            float_layers[name] = f"skip glob {pat!r} in the stage config"
        else:
            names.append(name)
    if not names:
        raise ModelError(f"int8: no layer of this {arch.name} model's body would be quantized, only the head "
                         f"would be considered and it stays float ({sorted(float_layers)}); "
                         "remove `skip` globs that cover the body")
    return names, float_layers, arch


def embedding_names(model: nn.Module, config: Int8DynamicConfig, arch: Arch) -> tuple[list[str], dict[str, str]]:
    """(embedding tables stored int8, {other embedding: why it stays float})."""
    if config.embeddings is None:
        wanted = {arch.full(model, p) for p in arch.embeddings}
        match = lambda n: n in wanted  # noqa: E731
    else:
        match = lambda n: any(fnmatch.fnmatchcase(n, p) for p in config.embeddings)  # noqa: E731
    chosen, kept = [], {}
    for n, m in model.named_modules():
        if isinstance(m, nn.Embedding):
            if match(n):
                chosen.append(n)
            else:
                kept[n] = "embedding: not a token-embedding table (position/type/bias tables are small)" \
                    if config.embeddings is None else "embedding: not matched by `embeddings`"
    return chosen, kept


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
    """Replace the body's linear-like layers in place; return the quantized weights by name."""
    names, _, _ = plan_int8(model, config)
    weights = {}
    for name in names:
        lin = as_linear(model.get_submodule(name))
        weights[name] = quantize_int8(lin.weight)
        set_module(model, name, _dq_linear(weights[name], lin.bias))
    return weights


def save_int8(model_fp32: nn.Module, out_dir: Path, config: Int8DynamicConfig) -> dict:
    """Quantize a copy's linear weights and write the int8 artifact files; returns the manifest fields."""
    from safetensors.torch import save_file

    names, float_layers, arch = plan_int8(model_fp32, config)
    state = {k: v.detach().contiguous() for k, v in model_fp32.state_dict().items()}
    for name in names:
        w = quantize_int8(as_linear(model_fp32.get_submodule(name)).weight)
        del state[f"{name}.weight"]
        state[f"{name}.qweight"] = w.qweight.contiguous()
        state[f"{name}.scales"] = w.scales.contiguous()
    embeddings, kept_embeddings = embedding_names(model_fp32, config, arch)
    for name in embeddings:
        w = quantize_int8(state.pop(f"{name}.weight"))  # per-row scales
        state[f"{name}.qweight"], state[f"{name}.scales"] = w.qweight.contiguous(), w.scales.contiguous()
    # Tied weights (GPT-2/Llama lm heads do not exist here, but ALBERT-like sharing might) are
    # saved once per name by state_dict; safetensors refuses shared storage, so clone.
    state = {k: v.clone() for k, v in state.items()}
    save_file(state, str(Path(out_dir) / WEIGHTS), metadata={"format": "chainpress-int8"})
    model_fp32.config.save_pretrained(out_dir)
    layout = {"linear": names, "embedding": embeddings, "model_type": arch.model_type}
    (Path(out_dir) / "int8_layers.json").write_text(json.dumps(layout, indent=1))
    return {"quantized_layers": len(names), "quantized_embeddings": embeddings,
            "float_layers": {**float_layers, **kept_embeddings}}


def load_int8(artifact) -> nn.Module:
    """Rebuild the model from config, then swap in dynamic-int8 linears from the stored codes."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = Path(artifact.path)
    weights = path / WEIGHTS if (path / WEIGHTS).is_file() else path / "model.safetensors"  # pre-rename artifacts
    cfg = AutoConfig.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_config(cfg)
    state = load_file(str(weights))
    layout = json.loads((path / "int8_layers.json").read_text())
    names = layout["linear"]
    for n in layout["embedding"]:
        state[f"{n}.weight"] = Int8Weight(state.pop(f"{n}.qweight"), state.pop(f"{n}.scales")).dequantize()
    codes = {n: Int8Weight(state.pop(f"{n}.qweight"), state.pop(f"{n}.scales")) for n in names}
    missing, unexpected = model.load_state_dict(state, strict=False)
    expected_missing = {f"{n}.weight" for n in names}
    if set(missing) - expected_missing or unexpected:
        raise ModelError(f"{path}: int8 checkpoint does not match its config "
                         f"(missing {sorted(set(missing) - expected_missing)}, unexpected {unexpected})")
    for n in names:
        bias = model.get_submodule(n).bias
        set_module(model, n, _dq_linear(codes[n], bias))
    return model.eval()

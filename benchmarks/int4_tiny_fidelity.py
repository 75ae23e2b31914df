"""int4 fidelity on the support matrix's tiny models: random-init, or briefly trained.

Runs ``quantize_onnx_int4`` on every architecture of ``tests/compress/tiny_models.py``
(2 layers, hidden 32; random init at std 0.2, or with ``--train-steps N`` std 0.02 then N
steps of SST-2 training, as the matrix's parents are) with each setting a user can change
(``OrtInt4Config``: method, 4-bit embeddings or fp32, group size, ``accuracy_level`` 0 =
fp32 activations instead of int8), and reports the argmax agreement and logit-margin
correlation with the fp32 ONNX parent on the matrix's 128 SST-2 dev sentences (GPTQ
calibrates on 128 train sentences). Which error dominates is what the table answers, and
whether random weights (no redundancy) or int4 itself is what costs agreement.

    python benchmarks/int4_tiny_fidelity.py --output docs/results/int4-tiny-fidelity-DATE
    python benchmarks/int4_tiny_fidelity.py --train-steps 300 --variants "gptq (default)" rtn
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "compress")]

VARIANTS = {  # name -> OrtInt4Config fields
    "gptq (default)": {},
    "rtn": {"method": "rtn"},
    "gptq, fp32 embeddings": {"embeddings": False},
    "gptq, group 16": {"group_size": 16},
    "gptq, group 16, fp32 embeddings": {"group_size": 16, "embeddings": False},
    "gptq, fp32 embeddings, fp32 activations": {"embeddings": False, "accuracy_level": 0},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", type=Path, help="write OUTPUT.md and OUTPUT.json")
    p.add_argument("--archs", nargs="*", help="model types (default: every one)")
    p.add_argument("--train-steps", type=int, default=0, help="train each parent this long first (default: 0)")
    p.add_argument("--variants", nargs="*", choices=list(VARIANTS), help="settings (default: every one)")
    args = p.parse_args()

    from test_arch_matrix import N_TEXTS, fidelity, onnx_predictions
    from tiny_models import configs, save_tiny
    from transformers import AutoTokenizer

    from chain.environment import cpu_flags
    from chain.task import builtin_task
    from compress.onnx_export import export_onnx
    from compress.onnx_int4 import OrtInt4Config, quantize_onnx_int4

    variants = {k: v for k, v in VARIANTS.items() if not args.variants or k in args.variants}
    texts = builtin_task("sst2").load("dev").texts[:N_TEXTS]
    calib = builtin_task("sst2").load("train").texts[:128]
    results: dict[str, dict] = {}
    parents: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mt in args.archs or list(configs()):
            d = Path(tmp) / mt
            save_tiny(mt, d / "hf", train_steps=args.train_steps)
            export_onnx(d / "hf", d / "onnx", texts)
            tok = AutoTokenizer.from_pretrained(d / "onnx")
            parent = onnx_predictions(d / "onnx", tok, texts)
            labels = builtin_task("sst2").load("dev").labels[:N_TEXTS]
            minority = min(float((parent.argmax(-1) == c).mean()) for c in (0, 1))
            parents[mt] = {"dev_accuracy": round(float((parent.argmax(-1) == labels).mean()), 3),
                           "minority_share": round(minority, 3)}
            results[mt] = {}
            for i, (name, kw) in enumerate(variants.items()):
                out = d / f"v{i}"
                out.mkdir()
                quantize_onnx_int4(d / "onnx", out, OrtInt4Config(**kw), calib)
                a, r = fidelity(onnx_predictions(out, tok, texts), parent)
                results[mt][name] = {"agreement": round(a, 3), "margin_r": round(r, 3)}
            print(mt, {k: (v["agreement"], v["margin_r"]) for k, v in results[mt].items()}, flush=True)
    flags = sorted(f for f in cpu_flags() if f in ("avx2", "avx512f", "avx512_vnni", "amx_int8"))
    init = (f"std 0.02, trained {args.train_steps} steps on SST-2" if args.train_steps
            else "random init, std 0.2")
    lines = [f"Parents: {init}. CPU flags: {', '.join(flags)}. Cells: argmax agreement with the fp32 parent "
             f"(margin r), {N_TEXTS} SST-2 dev sentences; the parent's own dev accuracy and the share "
             "of its rarer predicted class.", "",
             "| architecture | parent acc | parent minority | " + " | ".join(variants) + " |",
             "|---" * (len(variants) + 3) + "|"]
    for mt, row in results.items():
        lines.append(f"| {mt} | {parents[mt]['dev_accuracy']:.3f} | {parents[mt]['minority_share']:.3f} | "
                     + " | ".join(f"{v['agreement']:.3f} ({v['margin_r']:.3f})" for v in row.values()) + " |")
    n = len(results)
    lines.append("| **>= 0.95** | | | " + " | ".join(
        f"{sum(results[m][v]['agreement'] >= 0.95 for m in results)}/{n}" for v in variants) + " |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        args.output.with_suffix(".json").write_text(json.dumps({"cpu_flags": flags, "train_steps": args.train_steps,
                                                           "parents": parents, "results": results}, indent=1))
        args.output.with_suffix(".md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

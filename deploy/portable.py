"""The portable graph: standard ONNX operators only, for runtimes that are not ONNX Runtime.

chainpress' fastest graphs use ONNX Runtime's contrib ops (``QAttention``, ``BiasGelu``,
``SkipLayerNormalization``, ``MatMulNBits``, ``GatherBlockQuantized``), which ORT mobile's
reduced builds, OpenVINO and TensorRT do not all have. So the portable target starts
again from the nearest ancestor whose graph is standard (the fp32 ONNX export, or the
Hugging Face model, re-exported), and -- when the artifact was int8 -- quantizes it with
``quantize_dynamic`` restricted to ``MatMul`` (per channel) and ``Gather`` (the
embeddings), which emits only the standard ``DynamicQuantizeLinear`` + ``MatMulInteger``
and ``DequantizeLinear``. On the fine-tuned MiniLM (bench --quick's onnx-int8) that gave a
23.1 MB graph agreeing with PyTorch on 64/64 dev sentences (per-tensor MatMul weights and fp32
embeddings: 58.9 MB, 62/64). The result is checked twice: its op
domains (any non-standard one is an error) and its logits against PyTorch (or the fp32
graph when no PyTorch ancestor is on this machine):

* fp32: every |logit difference| <= 1e-4 and the same argmax everywhere;
* int8: argmax agreement >= 95% on the validation texts (int8 rounding moves logits by
  ~1e-2; the agreement and the largest difference are recorded in bundle.json).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from chain.artifact import MANIFEST, Artifact
from chain.errors import ExportValidationError, ModelError

STANDARD_DOMAINS = ("", "ai.onnx")
INT8_OPS = {"MatMulInteger", "QLinearMatMul", "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
            "QuantizeLinear", "DequantizeLinear", "MatMulNBits", "GatherBlockQuantized", "ConvInteger"}
FP32_ATOL = 1e-4
INT8_MIN_AGREEMENT = 0.95


def op_domains(model_path: Path) -> dict[str, list[str]]:
    """domain -> sorted op types of the graph (functions' bodies included)."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    out: dict[str, set] = {}
    nodes = list(m.graph.node) + [n for f in m.functions for n in f.node]
    for n in nodes:
        out.setdefault(n.domain or "ai.onnx", set()).add(n.op_type)
    return {d: sorted(ops) for d, ops in sorted(out.items())}


def nonstandard_ops(model_path: Path) -> list[str]:
    return [f"{d}.{op}" for d, ops in op_domains(model_path).items() if d not in STANDARD_DOMAINS for op in ops]


def _ancestors(art: Artifact):
    cur, seen = art, set()
    while cur is not None and cur.path.resolve() not in seen:
        seen.add(cur.path.resolve())
        yield cur
        parent = cur.manifest.get("parent")
        if not parent or not (Path(parent) / MANIFEST).is_file():
            return
        cur = Artifact(Path(parent), json.loads((Path(parent) / MANIFEST).read_text()))


def write_portable_model(art: Artifact, dest: Path, texts: list[str], cfg) -> dict:
    """Write a standard-ops ``model.onnx`` (and ``model.ort`` if asked) into ``dest``."""
    from compress.onnx_export import OnnxExportConfig, export_onnx

    source_ops = _all_ops(art)
    int8 = cfg.precision == "int8" or (cfg.precision == "auto" and bool(source_ops & INT8_OPS))
    chain = list(_ancestors(art))
    hf = next((a for a in chain if a.format == "hf"), None)
    std = next((a for a in chain if a.format == "onnx" and (a.path / "model.onnx").is_file()
                and not nonstandard_ops(a.path / "model.onnx") and not (_all_ops(a) & INT8_OPS)), None)
    fp32 = dest / ".fp32.onnx"
    if std is not None:
        shutil.copy2(std.path / "model.onnx", fp32)
        how = f"fp32 graph of stage {std.name!r}"
    elif hf is not None:
        work = dest / ".onnx-export"
        export_onnx(hf.path, work, texts, OnnxExportConfig())
        shutil.move(str(work / "model.onnx"), fp32)
        shutil.rmtree(work)
        how = f"re-exported from stage {hf.name!r} (Hugging Face)"
    else:
        raise ModelError(f"no ancestor of {art.path} with a standard fp32 graph or Hugging Face weights is on "
                         "this machine; export the fp32 ONNX or the fine-tuned artifact with --target portable")
    out = dest / "model.onnx"
    if int8:
        _quantize_standard(fp32, out)
        how += (", quantized by quantize_dynamic(op_types_to_quantize=['MatMul', 'Gather'], per_channel) "
                "-> MatMulInteger, DequantizeLinear")
    else:
        shutil.move(str(fp32), out)
    fp32.unlink(missing_ok=True)
    bad = nonstandard_ops(out)
    if bad:
        raise ExportValidationError(f"the portable graph still has non-standard ops {bad}; please report this")
    check = validate(out, hf, std, dest, texts, int8)
    info = {"how": how, "precision": "int8" if int8 else "fp32", "op_domains": list(op_domains(out)),
            "validation": check}
    if cfg.ort_format:
        info["ort"] = to_ort_format(out, dest, texts, art.path)
    return info


def _all_ops(art: Artifact) -> set[str]:
    p = art.path / "model.onnx"
    if art.format != "onnx" or not p.is_file():
        return set()
    return {op for ops in op_domains(p).values() for op in ops}


def _quantize_standard(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # MatMulConstBOnly: only weight matmuls (activation x activation ones stay fp32);
    # Gather: int8 embedding rows + DequantizeLinear (standard), a third of the size.
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gather"], weight_type=QuantType.QInt8,
                     per_channel=True, extra_options={"MatMulConstBOnly": True})


def _logits(session, tok, texts: list[str]) -> np.ndarray:
    from compress.onnx_export import onnx_logits

    return np.concatenate([onnx_logits(session, tok(texts[i:i + 8], padding=True, truncation=True,
                                                     max_length=128, return_tensors="np"))
                           for i in range(0, len(texts), 8)])


def validate(model: Path, hf: Artifact | None, std: Artifact | None, dest: Path, texts: list[str],
             int8: bool) -> dict:
    """Compare ``model``'s logits with PyTorch (else the fp32 graph); raise past tolerance."""
    from transformers import AutoTokenizer

    from .runtime import ort_session

    src = hf or std
    tok = AutoTokenizer.from_pretrained(str(src.path))
    got = _logits(ort_session(model), tok, texts)
    if hf is not None:
        import torch
        from transformers import AutoModelForSequenceClassification

        ref_model = AutoModelForSequenceClassification.from_pretrained(str(hf.path), use_safetensors=True).eval()
        refs = []
        for i in range(0, len(texts), 8):
            enc = tok(texts[i:i + 8], padding=True, truncation=True, max_length=128, return_tensors="pt")
            with torch.inference_mode():
                refs.append(ref_model(**enc).logits.float().numpy())
        ref, against = np.concatenate(refs), f"PyTorch ({hf.name})"
    else:
        ref, against = _logits(ort_session(std.path / "model.onnx"), tok, texts), f"fp32 ONNX ({std.name})"
    diff = float(np.abs(ref - got).max())
    agree = float((ref.argmax(-1) == got.argmax(-1)).mean())
    report = {"against": against, "texts": len(texts), "max_abs_diff": diff, "argmax_agreement": agree,
              "tolerance": f"argmax agreement >= {INT8_MIN_AGREEMENT}" if int8 else f"max|diff| <= {FP32_ATOL}, same argmax"}
    ok = agree >= INT8_MIN_AGREEMENT if int8 else (diff <= FP32_ATOL and agree == 1.0)
    if not ok:
        raise ExportValidationError(f"portable graph does not match {against}: max|diff|={diff:.2e}, argmax "
                                    f"agreement {agree:.3f} (needs {report['tolerance']})")
    return report


def to_ort_format(model: Path, dest: Path, texts: list[str], tokenizer_from: Path) -> dict:
    """``model.ort`` by onnxruntime's own converter, checked to give model.onnx's logits."""
    from transformers import AutoTokenizer

    from .runtime import ort_session

    work = dest / ".ort-work"
    work.mkdir()
    shutil.copy2(model, work / "model.onnx")
    r = subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(work / "model.onnx"),
                        "--output_dir", str(work / "out"), "--optimization_style", "Fixed"],
                       capture_output=True, text=True)
    found = list((work / "out").rglob("*.ort")) if (work / "out").is_dir() else []
    if r.returncode != 0 or not found:
        shutil.rmtree(work, ignore_errors=True)
        raise ExportValidationError("onnxruntime's .ort converter failed: " + (r.stderr.strip().splitlines() or ["?"])[-1])
    shutil.move(str(found[0]), dest / "model.ort")
    shutil.rmtree(work)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_from))
    a, b = _logits(ort_session(model), tok, texts[:16]), _logits(ort_session(dest / "model.ort"), tok, texts[:16])
    diff = float(np.abs(a - b).max())
    if diff > 1e-3 or (a.argmax(-1) != b.argmax(-1)).any():
        raise ExportValidationError(f"model.ort differs from model.onnx by {diff:.2e}; do not ship it")
    return {"file": "model.ort", "max_abs_diff_vs_onnx": diff}

"""ONNX export through optimum, validated against PyTorch on real task inputs.

optimum's exporter writes ``model.onnx`` plus config and tokenizer, so the directory
loads with ``ORTModelForSequenceClassification.from_pretrained``. Our validation is
stricter than optimum's random-input check: the exported graph and the PyTorch model
run the same real sentences at batch 1 and at a padded batch, every mismatch beyond
``atol`` (or any argmax disagreement) is collected, and any failure raises
``ExportValidationError`` -- never a warning.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from chain.errors import ExportValidationError, ModelError


@dataclass
class OnnxExportConfig:
    opset: int = 17
    atol: float = 1e-4  # max |logit difference| allowed, fp32 vs fp32
    validation_samples: int = 32
    # A parent carrying other tasks' heads (chain.heads) gets one output per task,
    # ``logits_<task>``, from one encoder pass (compress.onnx_multitask); False: its own head only.
    multitask: bool = True

    def __post_init__(self) -> None:
        if self.opset < 14:
            raise ValueError(f"opset must be >= 14 (needed for BERT attention ops), got {self.opset}")
        if self.atol <= 0:
            raise ValueError(f"atol must be positive, got {self.atol}")


_SPIN = False  # see ort_session


def spin_alone() -> None:
    """Sessions made after this spin as ONNX Runtime does by default: for a process that runs
    one model alone (bench's timing worker), as a user's ORT process does; the threads stop
    spinning when a call returns, so a model that waits its turn leaves the cores alone."""
    global _SPIN
    _SPIN = True


def ort_session(model_path: str | Path, threads: int = 1, spinning: bool | None = None):
    """An ONNX Runtime CPU session with fixed threads; spinning off unless asked (``spin_alone``).

    Spinning worker threads keep burning cores after a call returns and slow down whatever
    else runs in the process (PyTorch, another session), so a session that shares its
    process does not spin. Alone in its process spinning is worth having: on a 2-vCPU AMD
    EPYC with AVX-512, the pruned MiniLM int8 graph's batch-1 p50 was 1.14-1.19 ms spinning and
    1.64-1.72 ms not, and without spinning one thread was nearly as fast as two (1.68-1.73 ms;
    benchmarks/ort_spinning_alone.py, docs/results/bench-2026-12-04-avx512.md).
    """
    import onnxruntime as ort

    spin = "1" if (_SPIN if spinning is None else spinning) else "0"
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    # spinning inside a call, not after it: left spinning, an idle timing worker's threads took
    # the cores from the next worker in the rotation (ORT int8 at batch 32: 440 vs 560 samples/s)
    so.add_session_config_entry("session.force_spinning_stop", spin)
    so.log_severity_level = 3
    return ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])


def onnx_logits(session, enc: dict, output: str | None = None) -> np.ndarray:
    """Output 0 (``logits``: the artifact's own task), or the named one (``logits_<task>``)."""
    names = {i.name for i in session.get_inputs()}
    feed = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in names}
    return session.run(None if output is None else [output], feed)[0]


def compare_logits(ref_model, session, tokenizer, texts: list[str], atol: float,
                   batch_sizes=(1, 8), max_length: int = 128, output: str | None = None) -> dict:
    """Run both models on ``texts``; return max abs diff and every failing batch."""
    failures, max_diff, agree, n = [], 0.0, 0, 0
    # Both sides get the same inputs: the graph's. A tokenizer's token_type_ids reach GPT-2 as
    # extra token embeddings in PyTorch while its exported graph has no such input.
    names = {i.name for i in session.get_inputs()}
    for bs in batch_sizes:
        for i in range(0, len(texts), bs):
            enc = tokenizer(texts[i:i + bs], padding=True, truncation=True, max_length=max_length,
                            return_tensors="np")
            enc = {k: v for k, v in enc.items() if k in names}
            with torch.inference_mode():
                ref = ref_model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.float().numpy()
            got = onnx_logits(session, enc, output)
            diff = float(np.abs(ref - got).max())
            max_diff = max(max_diff, diff)
            same = ref.argmax(-1) == got.argmax(-1)
            agree += int(same.sum())
            n += len(same)
            if diff > atol or not same.all():
                failures.append(f"batch {bs} rows {i}..{i + len(same) - 1}: max|diff|={diff:.2e}, "
                                f"argmax disagreements={int((~same).sum())}")
    return {"max_abs_diff": max_diff, "argmax_agreement": agree / max(n, 1), "failures": failures}


def export_onnx(model_dir: Path, out_dir: Path, texts: list[str], config: OnnxExportConfig = OnnxExportConfig(),
                trust_remote_code: bool = False) -> dict:
    """Export ``model_dir`` (HF format) to ``out_dir``; validate on ``texts``; return the report."""
    from optimum.exporters.onnx import main_export
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    for name in ("optimum", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        main_export(str(model_dir), output=str(out_dir), task="text-classification", opset=config.opset,
                    do_validation=False, library_name="transformers", trust_remote_code=trust_remote_code,
                    local_files_only=True)
    except (KeyError, ValueError) as e:
        raise ModelError(f"optimum cannot export {model_dir} to ONNX ({e}); "
                         "chainpress exports the sequence classifiers chain.arch declares") from None
    if not texts:
        raise ExportValidationError("no validation texts given; export needs real task inputs to check")
    ref = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).eval()
    tok = AutoTokenizer.from_pretrained(out_dir)
    report = compare_logits(ref, ort_session(out_dir / "model.onnx"), tok, texts[:config.validation_samples],
                            config.atol)
    if report["failures"]:
        raise ExportValidationError(
            f"ONNX export of {model_dir} does not match PyTorch within atol={config.atol}: "
            + "; ".join(report["failures"][:5]) + " -- raise `atol` only if this drift is acceptable")
    out = {"validation": {k: v for k, v in report.items() if k != "failures"},
           "validation_samples": min(len(texts), config.validation_samples), "atol": config.atol}
    if config.multitask:
        out.update(export_heads(model_dir, out_dir, ref, texts[:config.validation_samples], config.atol))
    return out


def export_heads(model_dir: Path, out_dir: Path, model, texts: list[str], atol: float) -> dict:
    """Add ``logits_<task>`` outputs for every head ``model_dir`` carries (none: {}); the
    manifest fields ``heads`` ({task: output, labels, num_labels}) and ``head_validation``."""
    from chain.heads import head_labels, head_tasks, load_head

    from .onnx_multitask import add_task_heads, validate_heads

    tasks = head_tasks(model_dir)
    own = _own_task(model_dir)
    if not tasks or tasks == [own] or own is None:
        return {}
    if own not in tasks:
        raise ModelError(f"{model_dir} carries heads for {tasks} but none for its own task {own!r}; "
                         "re-run its fine-tune stage (it saves its head)")
    heads = {t: load_head(model_dir, t) for t in tasks}
    outputs = add_task_heads(out_dir / "model.onnx", model, heads, own)
    validation = validate_heads(model_dir, out_dir / "model.onnx", outputs, texts, atol)
    return {"heads": {t: {"output": o, "labels": head_labels(model_dir, t),
                          "num_labels": int(_rows(heads[t]))} for t, o in outputs.items()},
            "head_validation": validation}


def _rows(state: dict) -> int:
    return [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2][-1].shape[0]


def _own_task(model_dir: Path) -> str | None:
    """The task the artifact was trained on last (its manifest), whose head is the model's."""
    from chain.artifact import Artifact

    return (Artifact.load(model_dir).manifest.get("task") or {}).get("name")

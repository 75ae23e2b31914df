"""The chains ``python -m bench`` runs. Reference = the fine-tuned fp32 PyTorch model."""
from __future__ import annotations

from chain.finetune import FineTune, FineTuneConfig
from compress.stages import ExportOnnx, QuantizeInt8, QuantizeOnnxInt8
from kernels.stage import FusedKernels

REFERENCE = "finetune"


def default_stages(ft: FineTuneConfig) -> list:
    """all-MiniLM-L6-v2 -> fine-tune -> PyTorch int8 | ONNX fp32 -> ONNX Runtime int8 | fused kernels.

    The ``kernels`` stage runs only on a CUDA machine; elsewhere its row says ``skipped`` and why.
    """
    return [FineTune(ft, name=REFERENCE), QuantizeInt8(name="int8", parent=REFERENCE),
            ExportOnnx(name="onnx", parent=REFERENCE), QuantizeOnnxInt8(name="onnx-int8", parent="onnx"),
            FusedKernels(name="kernels", parent=REFERENCE)]

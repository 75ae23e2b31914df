"""The chains ``python -m bench`` runs. Reference = the fine-tuned fp32 PyTorch model."""
from __future__ import annotations

from dataclasses import replace

from chain.finetune import DistillSettings, FineTune, FineTuneConfig
from compress.onnx_quantize import OrtInt8Config
from compress.prune import PruneConfig
from compress.stages import ExportOnnx, Prune, QuantizeInt8, QuantizeOnnxInt4, QuantizeOnnxInt8
from kernels.stage import FusedKernels

REFERENCE = "finetune"

# int8 MatMuls, 4-bit word embeddings: on the fine-tuned MiniLM the ONNX graph went from
# 23.0 MB (int8 embeddings, 25% of fp32) to 17.4 MB, SST-2 test accuracy 0.8797 -> 0.8781
# (python -m bench, docs/results/bench-int8-embeddings-2026-11-23.md and bench-2026-11-23.md).
ONNX_INT8 = OrtInt8Config(embeddings="int4", embedding_block=128)
# Half the heads and 60% of the FFN neurons of every layer, ranked by Taylor importance on
# SST-2 train batches. At heads=ffn=0.5, SST-2 test accuracy was 0.8512 before and 0.8918
# after the distilled recovery, but the int8 graph was 12.1 MB; ffn=0.6 gives 0.8353 ->
# 0.8819 at 11.3 MB (docs/results/bench-prune-ffn50-2026-11-23.md, bench-2026-11-23.md).
PRUNE = PruneConfig(heads=0.5, ffn=0.6, importance="taylor")


def default_stages(ft: FineTuneConfig, recover_epochs: float = 2.0, prune: PruneConfig = PRUNE) -> list:
    """all-MiniLM-L6-v2 -> fine-tune, then every way out of it that bench compares:

    * PyTorch dynamic int8; ONNX fp32 -> ONNX Runtime int8 | weight-only int4 (MatMulNBits);
    * structured pruning -> recovery fine-tune distilled from the fine-tuned model ->
      ONNX -> ONNX Runtime int8 (the smallest, fastest output);
    * ``kernels`` (fused Triton runtime): CUDA only; elsewhere its row says ``skipped`` and why.
    """
    recover = replace(ft, epochs=recover_epochs, distill=DistillSettings(teacher=REFERENCE))
    return [FineTune(ft, name=REFERENCE), QuantizeInt8(name="int8", parent=REFERENCE),
            ExportOnnx(name="onnx", parent=REFERENCE),
            QuantizeOnnxInt8(ONNX_INT8, name="onnx-int8", parent="onnx"),
            QuantizeOnnxInt4(name="onnx-int4", parent="onnx"),
            Prune(prune, name="pruned", parent=REFERENCE),
            FineTune(recover, name="recovered", parent="pruned"),
            ExportOnnx(name="recovered-onnx", parent="recovered"),
            QuantizeOnnxInt8(ONNX_INT8, name="recovered-onnx-int8", parent="recovered-onnx"),
            FusedKernels(name="kernels", parent=REFERENCE)]

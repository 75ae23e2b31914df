"""Fixtures shared by the timing tests in tests/bench."""
import pytest

from bench.gate_check import GateCheckConfig, build
from bench.harness import MeasureConfig


@pytest.fixture(scope="module")
def chain_dirs(tiny_bert_dir, tmp_path_factory):
    """fp32 (PyTorch), int8 (torch-int8), onnx and onnx-int8 (ONNX Runtime) of the tiny BERT."""
    cfg = GateCheckConfig(work=tmp_path_factory.mktemp("chain"), model=str(tiny_bert_dir), eval_examples=16,
                          measure=MeasureConfig(threads=1))
    return build(cfg, log=lambda *_: None)

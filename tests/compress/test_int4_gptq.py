"""GPTQ int4 (compress/gptq.py): the same Int4Weight format, less output error than rounding on real-like inputs."""
import numpy as np
import pytest
import torch

from compress.formats import quantize_int4
from compress.gptq import gptq_int4, matmul_hessians
from compress.onnx_int4 import OrtInt4Config


def _inputs(n_rows=512, k=64, seed=0):
    """Rows of correlated features (as hidden states are): one fixed mix, rows drawn by ``seed``."""
    mix = torch.randn(k, k, generator=torch.Generator().manual_seed(100), dtype=torch.float64)
    return torch.randn(n_rows, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) @ mix


def test_gptq_beats_round_to_nearest_on_the_calibration_inputs():
    x = _inputs()
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    rtn, gq = quantize_int4(w, 32), gptq_int4(w, x.T @ x, 32)
    assert gq.qweight.shape == rtn.qweight.shape and gq.scales.shape == rtn.scales.shape
    assert gq.zeros.dtype == torch.uint8 and int(gq.zeros.max()) <= 15
    err = {name: float(((x @ (w.double() - q.dequantize().double()).T) ** 2).mean()) for name, q in
           (("rtn", rtn), ("gptq", gq))}
    assert err["gptq"] < 0.8 * err["rtn"], err
    held_out = _inputs(seed=2)  # new rows of the same features: the gain is not memorised
    assert float(((held_out @ (w.double() - gq.dequantize().double()).T) ** 2).mean()) < float(
        ((held_out @ (w.double() - rtn.dequantize().double()).T) ** 2).mean())


def test_inputs_never_active_leave_their_weights_out():
    x = _inputs()
    x[:, :32] = 0  # the first group never sees input
    q = gptq_int4(torch.randn(8, 64), x.T @ x, 32)
    assert torch.all(q.dequantize()[:, :32] == 0)


def test_hessians_skip_padding(tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, None, 4]),
                               helper.make_tensor_value_info("attention_mask", onnx.TensorProto.INT64, [None, None])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, None, 4])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    x = np.ones((1, 3, 4), np.float32)
    x[0, 2] = 100.0  # a padding position: must not count
    h = matmul_hessians(tmp_path / "m.onnx", ["x"], [{"x": x, "attention_mask": np.array([[1, 1, 0]])}])
    assert torch.allclose(h["x"], torch.full((4, 4), 2.0, dtype=torch.float64))


@pytest.mark.parametrize("kw", [{"method": "awq"}, {"calibration_samples": 0}, {"damp": 0}])
def test_bad_config_is_refused(kw):
    with pytest.raises(ValueError):
        OrtInt4Config(**kw)

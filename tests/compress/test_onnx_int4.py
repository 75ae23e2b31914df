"""MatMulNBits written from chainpress' Int4Weight computes exactly x @ dequant(W)."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from compress.formats import quantize_int4
from compress.onnx_export import ort_session
from compress.onnx_int4 import OrtInt4Config, pack_zero_points, quantize_onnx_int4


def _matmul_model(path, w_kn: np.ndarray):
    k, n = w_kn.shape
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", n])],
                          [numpy_helper.from_array(w_kn, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("k,n,group", [(64, 48, 32), (96, 40, 32), (128, 24, 64)])
def test_matmulnbits_equals_our_dequantized_weights(tmp_path, k, n, group):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir(), out.mkdir()
    w = np.random.randn(k, n).astype(np.float32)
    _matmul_model(src / "model.onnx", w)
    (src / "config.json").write_text('{"model_type": "bert"}')  # the architecture declaration to read
    report = quantize_onnx_int4(src, out, OrtInt4Config(group_size=group, accuracy_level=0, embeddings=False,
                                                              method="rtn"))
    assert report["int4_matmuls"] == 1
    ops = [nd.op_type for nd in onnx.load(str(out / "model.onnx")).graph.node]
    assert ops == ["MatMulNBits"]
    x = np.random.randn(5, k).astype(np.float32)
    got = ort_session(out / "model.onnx").run(None, {"x": x})[0]
    want = x @ quantize_int4(torch.from_numpy(w.T.copy()), group).dequantize().numpy().T
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_zero_point_packing_low_nibble_first():
    z = torch.tensor([[1, 2, 3], [4, 5, 6]], dtype=torch.uint8)
    assert pack_zero_points(z).tolist() == [1 | 2 << 4, 3 | 8 << 4, 4 | 5 << 4, 6 | 8 << 4]

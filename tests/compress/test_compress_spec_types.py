"""The compress/ stage types are nameable from a chain spec, with typed, validated configs."""
import pytest

from chain.errors import SpecError
from chain.finetune import DistillSettings
from chain.registry import stage_class
from chain.spec import parse_spec
from compress.onnx_static import OrtStaticInt8Config
from compress.sensitivity import AccuracyAwareConfig
from compress.sparsity import SparsityConfig
from compress.stages import (AccuracyAwareQuantize, Prune, QuantizeOnnxInt4, QuantizeOnnxStaticInt8, Sparsify)


def test_stage_types_resolve():
    assert stage_class("prune") is Prune
    assert stage_class("quantize_onnx_int4") is QuantizeOnnxInt4
    assert stage_class("quantize_onnx_static_int8") is QuantizeOnnxStaticInt8
    assert stage_class("sparsify") is Sparsify
    assert stage_class("quantize_accuracy_aware") is AccuracyAwareQuantize


def test_spec_builds_typed_configs(tmp_path):
    (tmp_path / "teacher").mkdir()
    spec = parse_spec({"stages": [
        {"name": "ft", "type": "finetune", "task": "sst2", "config": {"distill": {"teacher": "teacher"}}},
        {"name": "pruned", "type": "prune", "config": {"heads": 0.25}},
        {"name": "sparse", "type": "sparsify", "config": {"kind": "2:4"}},
        {"name": "aa", "type": "quantize_accuracy_aware", "parent": "pruned",
         "config": {"budget": 0.02, "embeddings": []}},
        {"name": "onnx", "type": "export_onnx", "parent": "pruned"},
        {"name": "static", "type": "quantize_onnx_static_int8", "config": {"calibration": "entropy",
                                                                            "op_types": ["MatMul"]}},
        {"name": "int4", "type": "quantize_onnx_int4", "parent": "onnx"},
    ]}, base_dir=tmp_path)
    cfg = {s.name: s.config for s in spec.stages}
    assert isinstance(cfg["ft"].distill, DistillSettings) and cfg["ft"].distill.alpha == 0.5
    assert cfg["ft"].distill.teacher == str(tmp_path / "teacher")  # relative to the spec's directory
    assert cfg["sparse"] == SparsityConfig(kind="2:4")
    assert cfg["aa"] == AccuracyAwareConfig(budget=0.02, embeddings=())
    assert cfg["static"] == OrtStaticInt8Config(calibration="entropy", op_types=("MatMul",))


@pytest.mark.parametrize("stage,msg", [
    ({"type": "sparsify", "config": {"kind": "1:2"}}, r"stages\[0\] \(s\)\.config: sparsify\.kind"),
    ({"type": "quantize_onnx_static_int8", "config": {"calibration": "kl"}}, r"\(s\)\.config: calibration"),
    ({"type": "quantize_accuracy_aware", "config": {"budget": -1}}, r"\(s\)\.config: .*budget"),
])
def test_spec_errors_name_the_field(stage, msg):
    with pytest.raises(SpecError, match=msg):
        parse_spec({"stages": [{"name": "s", **stage}]})

"""The ``kernels`` chain stage: config validation, and an honest skip without CUDA."""
import pytest
import torch

from chain.artifact import Artifact, write_manifest
from chain.errors import SpecError
from chain.registry import stage_class
from chain.stage import RunContext
from kernels.stage import RUNTIME, FusedKernels, KernelsConfig


def test_registered_for_specs():
    assert stage_class("kernels") is FusedKernels


@pytest.mark.parametrize("bad", [dict(dtype="int8"), dict(int8_weights=True, int4_weights=True),
                                 dict(group_size=48)])
def test_bad_config_names_the_field(bad):
    with pytest.raises(SpecError, match="kernels"):
        KernelsConfig(**bad)


def test_links_parent_weights_and_records_runtime(tiny_bert, tmp_path, monkeypatch):
    write_manifest(tiny_bert, stage="finetune", format="hf")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # as bench runs it: no interpreter
    out = tmp_path / "kernels"
    out.mkdir()
    fields = FusedKernels(KernelsConfig(int4_weights=True)).run(Artifact.load(tiny_bert), out, RunContext())
    assert fields["runtime"] == RUNTIME and fields["kernels"]["int4_weights"] is True
    assert (out / "model.safetensors").stat().st_ino == (tiny_bert / "model.safetensors").stat().st_ino
    if torch.cuda.is_available():
        assert "skip_reason" not in fields
    else:
        assert "CUDA" in fields["skip_reason"]


def test_interpreter_is_not_a_runtime_to_time(tiny_bert, tmp_path, monkeypatch):
    write_manifest(tiny_bert, stage="finetune", format="hf")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = tmp_path / "kernels"
    out.mkdir()
    fields = FusedKernels().run(Artifact.load(tiny_bert), out, RunContext())
    assert "interpreter" in fields["skip_reason"].lower()


def test_needs_a_hugging_face_parent(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")
    write_manifest(tmp_path, stage="onnx", format="onnx")
    with pytest.raises(SpecError, match="Hugging Face parent"):
        FusedKernels().run(Artifact.load(tmp_path), tmp_path / "out", RunContext())

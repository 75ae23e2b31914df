"""Artifacts and bundles for the deploy tests, built once per session from a tiny BERT.

``onnx_artifact`` is what a chain's ``onnx`` stage leaves (model.onnx + manifest naming
its Hugging Face parent and the SST-2 task); ``int8_artifact`` is the ORT-fused int8
graph full of ``com.microsoft`` ops, the case the portable target exists for.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import save_tiny_bert

PYTHON = sys.executable


@pytest.fixture(scope="session")
def sst2():
    from chain.task import builtin_task

    return builtin_task("sst2")


@pytest.fixture(scope="session")
def hf_artifact(tmp_path_factory, sst2) -> Path:
    from chain.artifact import write_manifest

    d = save_tiny_bert(tmp_path_factory.mktemp("art") / "00-finetune")
    write_manifest(d, stage="finetune", stage_type="FineTune", format="hf", num_labels=2, task=sst2.to_dict(),
                   metrics={"accuracy": 0.51, "size_mb": 16.0}, parent=None)
    return d


@pytest.fixture(scope="session")
def onnx_artifact(hf_artifact, sst2) -> Path:
    from chain.artifact import write_manifest
    from compress.onnx_export import OnnxExportConfig, export_onnx

    d = hf_artifact.parent / "01-onnx"
    export_onnx(hf_artifact, d, sst2.load("dev").texts[:16], OnnxExportConfig())
    write_manifest(d, stage="onnx", stage_type="ExportOnnx", format="onnx", num_labels=2, task=sst2.to_dict(),
                   metrics={"accuracy": 0.51, "size_mb": 16.1}, parent=str(hf_artifact), parent_stage="finetune")
    return d


@pytest.fixture(scope="session")
def int8_artifact(onnx_artifact, sst2) -> Path:
    from chain.artifact import write_manifest
    from compress.onnx_quantize import OrtInt8Config, quantize_onnx_int8

    d = onnx_artifact.parent / "02-onnx-int8"
    d.mkdir()
    quantize_onnx_int8(onnx_artifact, d, OrtInt8Config(), texts=sst2.load("dev").texts[:8])
    for f in d.glob("_*.onnx"):
        f.unlink()
    write_manifest(d, stage="onnx-int8", stage_type="QuantizeOnnxInt8", format="onnx", num_labels=2,
                   task=sst2.to_dict(), metrics={"accuracy": 0.5, "size_mb": 4.0}, parent=str(onnx_artifact),
                   parent_stage="onnx")
    return d


@pytest.fixture(scope="session")
def bundle_dir(onnx_artifact, tmp_path_factory) -> Path:
    from deploy.export import export

    out = tmp_path_factory.mktemp("bundles") / "sst2-tiny"
    export(onnx_artifact, out, "bundle")
    return out


OURS = ("chain", "compress", "deploy", "bench", "kernels")
# The venv has chainpress installed (editable: a meta-path finder); the child drops that
# finder and any path entry holding its packages, so it runs as on a machine without it.
GUARD = f"""
import os, sys
sys.meta_path = [f for f in sys.meta_path if 'chainpress' not in (getattr(f, '__module__', '') or '')
                 and 'chainpress' not in type(f).__module__]
sys.path = [p for p in sys.path if p and not os.path.isfile(os.path.join(p, 'deploy', 'bundle.py'))
            and not os.path.isfile(os.path.join(p, 'chain', 'artifact.py'))]
for name in {OURS!r}:
    try:
        __import__(name)
    except ImportError:
        continue
    raise SystemExit('chainpress is still importable: ' + name)
"""
CHECK = f"""
bad = [m for m in sys.modules if m.split('.')[0] in {OURS!r}]
assert not bad, bad
"""


@pytest.fixture(scope="session")
def mt_bundle(tmp_path_factory, sst2):
    """(multi-task bundle: SST-2 own + Subj + TREC heads of a tiny BERT, its single-task twin)."""
    from tests.compress.multihead_models import save_multihead
    from chain.artifact import write_manifest
    from compress.onnx_export import OnnxExportConfig, export_onnx
    from deploy.export import export

    root = tmp_path_factory.mktemp("mt")
    hf = save_multihead(root / "sst2")
    onnx_dir = root / "onnx"
    report = export_onnx(hf, onnx_dir, sst2.load("dev").texts[:16], OnnxExportConfig())
    write_manifest(onnx_dir, stage="onnx", stage_type="export_onnx", format="onnx", num_labels=2,
                   task=sst2.to_dict(), parent=str(hf), **report)
    export(onnx_dir, root / "bundle", "bundle")
    single = root / "single"
    export_onnx(hf, single, sst2.load("dev").texts[:16], OnnxExportConfig(multitask=False))
    write_manifest(single, stage="onnx", stage_type="export_onnx", format="onnx", num_labels=2,
                   task=sst2.to_dict(), parent=str(hf))
    export(single, root / "single-bundle", "bundle")
    return root / "bundle", root / "single-bundle"


def run_standalone(script: str, *args: str, timeout: float = 120) -> dict:
    """Run ``script`` in a fresh interpreter where chainpress cannot be imported; it must
    print one JSON line (its last line of output)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    r = subprocess.run([PYTHON, "-c", GUARD + script + CHECK, *args], capture_output=True, text=True,
                       timeout=timeout, cwd="/", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def standalone():
    """``run_standalone`` as a fixture (test modules here are not a package)."""
    return run_standalone


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def in_process_server():
    """Start ``create_app(cfg)`` on uvicorn in a thread on a free loopback port; yields a
    function cfg -> (base_url, app); every server started is stopped at teardown."""
    import threading
    import time

    import uvicorn

    from deploy.server import create_app

    started = []

    def start(cfg):
        app = create_app(cfg)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        th = threading.Thread(target=server.run, daemon=True)
        th.start()
        t0 = time.monotonic()
        while not server.started:
            assert th.is_alive() and time.monotonic() - t0 < 60, "server did not start"
            time.sleep(0.02)
        started.append((server, th))
        return f"http://127.0.0.1:{port}", app

    yield start
    for server, th in started:
        server.should_exit = True
        th.join(timeout=30)


def offline_probs(bundle_dir: Path):
    """The bundle's predictions one text at a time, through plain onnxruntime (not deploy's
    runtime): what every server and batch answer must equal."""
    from transformers import AutoTokenizer

    from compress.onnx_export import onnx_logits, ort_session
    from deploy.runtime import softmax

    tok = AutoTokenizer.from_pretrained(str(bundle_dir))
    sess = ort_session(bundle_dir / "model.onnx")

    def probs(texts: list[str]):
        import numpy as np

        return np.concatenate([softmax(onnx_logits(sess, tok([t], truncation=True, max_length=128,
                                                                return_tensors="np"))) for t in texts])
    return probs


@pytest.fixture(scope="session")
def offline(bundle_dir):
    return offline_probs(bundle_dir)


@pytest.fixture(scope="session")
def offline_for():
    return offline_probs


@pytest.fixture
def port() -> int:
    return free_port()

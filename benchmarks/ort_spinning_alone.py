"""One ONNX graph alone in this process: batch-1 p50/p90 and batch-32 samples/s, by how ONNX
Runtime's threads wait (what ``compress.onnx_export.ort_session`` chose from).

``off``: no spinning (a session that shares its process); ``on``: ORT's default; ``stop``:
spinning inside a call, stopped when it returns (``session.force_spinning_stop``, what bench's
timing workers use). 300 SST-2 test sentences at batch 1 after 10 warm-up calls, then 5 rounds
of 8 fixed batches of 32 after 3; intra-op threads: THREADS (default 2). Run each mode in its
own process, in rotation:

    for r in 1 2; do for m in off on stop; do python benchmarks/ort_spinning_alone.py DIR $m; done; done
    python benchmarks/ort_spinning_alone.py DIR off 1   # does a second thread help without spinning?
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("off", "on", "stop")


def main(model_dir: str, mode: str, threads: int = 2) -> None:
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from chain.task import builtin_task

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0" if mode == "off" else "1")
    if mode == "stop":
        so.add_session_config_entry("session.force_spinning_stop", "1")
    sess = ort.InferenceSession(str(Path(model_dir) / "model.onnx"), so, providers=["CPUExecutionProvider"])
    tok = AutoTokenizer.from_pretrained(model_dir)
    names = {i.name for i in sess.get_inputs()}

    def enc(batch):
        out = tok(batch, truncation=True, max_length=128, padding=True, return_tensors="np")
        return {k: np.asarray(v, dtype=np.int64) for k, v in out.items() if k in names}

    texts = builtin_task("sst2").load("test").texts
    b1, b32 = [enc([t]) for t in texts[:300]], [enc(texts[i * 32:(i + 1) * 32]) for i in range(8)]
    for f in b1[:10]:
        sess.run(None, f)
    ms = []
    for f in b1:
        t0 = time.perf_counter()
        sess.run(None, f)
        ms.append((time.perf_counter() - t0) * 1e3)
    for f in b32[:3]:
        sess.run(None, f)
    t0 = time.perf_counter()
    for _ in range(5):
        for f in b32:
            sess.run(None, f)
    print(f"{mode:4s} threads={threads} b1 p50 {np.median(ms):.3f} ms p90 {np.percentile(ms, 90):.3f} ms "
          f"b32 {5 * 8 * 32 / (time.perf_counter() - t0):.1f} samples/s")


if __name__ == "__main__":
    args = sys.argv[1:]
    if (len(args) not in (2, 3) or args[1] not in MODES or not (Path(args[0]) / "model.onnx").is_file()
            or (len(args) == 3 and not args[2].isdigit()) or (len(args) == 3 and int(args[2]) < 1)):
        print("usage: python benchmarks/ort_spinning_alone.py ONNX_ARTIFACT_DIR off|on|stop [THREADS >= 1]",
              file=sys.stderr)
        sys.exit(2)
    main(args[0], args[1], int(args[2]) if len(args) == 3 else 2)

"""NNCF int8 with int8 vs 4-bit embedding tables: size, dev accuracy and batch-32 speed (issue 12).

Quantizes one fp32 ONNX artifact (e.g. a bench run's ``recovered-onnx``) both ways with
``compress.openvino_int8.nncf_int8`` (the stage's own function, calibrated on the first
``--calibration`` SST-2 train sentences), then reports each IR's weight file size, its
SST-2 dev accuracy and its batch-32 samples/s on bench's own inputs. The two graphs are
timed in one process, alternating round by round (``--rounds`` rounds of 8 batches), so
host drift hits both alike; run it more than once, swapping nothing else, to see the noise.

>>> python benchmarks/openvino_int4_embeddings.py RUN/artifacts/recovered-onnx-<key>
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact", type=Path, help="an fp32 ONNX artifact directory (model.onnx)")
    p.add_argument("--calibration", type=int, default=300)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    if not (a.artifact / "model.onnx").is_file():
        print(f"error: {a.artifact} has no model.onnx; give an export_onnx stage's artifact", file=sys.stderr)
        return 2
    import openvino as ov

    from bench.harness import MeasureConfig, timing_inputs
    from chain.artifact import Artifact
    from chain.model import load_tokenizer
    from chain.predict import encode_batches
    from chain.task import builtin_task
    from compress.openvino import compile_openvino, openvino_fn
    from compress.openvino_int8 import OpenVinoInt8Config, nncf_int8

    tok = load_tokenizer(Artifact.load(a.artifact))
    sst2 = builtin_task("sst2")
    calib = [enc for _, enc in encode_batches(tok, sst2.load("train").texts[:a.calibration], 1, 128)]
    dev = sst2.load("dev")
    _, b32 = timing_inputs(tok, sst2.load("test").texts, MeasureConfig(threads=a.threads))
    out, fns, rows = Path(tempfile.mkdtemp()), {}, {}
    for emb in ("int8", "int4"):
        model = nncf_int8(ov.Core().read_model(str(a.artifact / "model.onnx")), calib,
                          OpenVinoInt8Config(embeddings=emb))
        ov.save_model(model, str(out / f"{emb}.xml"), compress_to_fp16=False)
        fn = openvino_fn(compile_openvino(out / f"{emb}.xml", a.threads, "auto"))
        pred = np.concatenate([fn(enc).argmax(-1) for _, enc in encode_batches(tok, dev.texts, 64, 128)])
        rows[emb] = {"bin_mb": (out / f"{emb}.bin").stat().st_size / 1e6,
                     "dev": float((pred == np.asarray(dev.labels)).mean()), "rates": []}
        fns[emb] = fn
    for fn in fns.values():
        for b in b32[:3]:
            fn(b)
    for r in range(a.rounds):
        for emb in (("int8", "int4") if r % 2 == 0 else ("int4", "int8")):
            t0 = time.perf_counter()
            for b in b32:
                fns[emb](b)
            rows[emb]["rates"].append(len(b32) * 32 / (time.perf_counter() - t0))
    print("| embeddings | model.bin MB | dev accuracy | batch-32 samples/s (median) |\n|---|---|---|---|")
    for emb, r in rows.items():
        print(f"| {emb} | {r['bin_mb']:.2f} | {r['dev']:.4f} | {np.median(r['rates']):.0f} |")
    ratio = np.median(np.array(rows["int4"]["rates"]) / np.array(rows["int8"]["rates"]))
    print(f"\nint4 / int8 batch-32 throughput, median of per-round ratios: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

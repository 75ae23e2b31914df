"""Why is a model slower timed beside another in one process than alone? One condition per fresh process.

Times batch-1 p50 of PyTorch fp32 and ONNX Runtime int8 (the gate check's artifacts) under
conditions that each switch on one suspect: a second runtime's thread pool, OpenMP spin,
ORT spinning, cache pollution by the other model's calls, and how often the variants
alternate. Conditions run in rotating order, ``--repeats`` times; the table gives each
condition's p50 over the alone p50 (median over repeats).

>>> python benchmarks/isolation_causes.py --work /work/tmp-timing/gc --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# name -> (models loaded, models timed, calls per turn, extra env, flush MB between calls)
CONDITIONS = {
    "alone": (None, None, 1, {}, 0),
    "together (bench today)": ("both", "both", 1, {}, 0),
    "together, 10 calls per turn": ("both", "both", 10, {}, 0),
    "together, other model loaded but idle": ("both", "self", 1, {}, 0),
    "together, OMP_WAIT_POLICY=ACTIVE": ("both", "both", 1, {"OMP_WAIT_POLICY": "ACTIVE"}, 0),
    "together, ORT spinning on": ("both", "both", 1, {"BENCH_ORT_SPIN": "1"}, 0),
    "alone, 90 MB written between calls": (None, None, 1, {}, 90),
}
MODELS = {"fp32": "fp32", "onnx-int8": "artifacts/02-onnx-int8"}


def _child(work: Path, loaded: list[str], timed: list[str], block: int, flush_mb: int, calls: int) -> dict:
    import numpy as np

    from chain.artifact import Artifact
    from chain.model import load_tokenizer
    from chain.task import builtin_task

    from chain.predict import encode_batches
    from chain.runtime import load_predictor

    if os.environ.get("BENCH_ORT_SPIN"):
        import compress.onnx_export as ox

        def spinning(path, threads=1):
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

        ox.ort_session = spinning
    arts = {n: Artifact.load(work / MODELS[n]) for n in loaded}
    preds = {n: load_predictor(a, 2) for n, a in arts.items()}
    import random

    import torch

    torch.set_num_threads(2)
    texts = random.Random(0).sample(builtin_task("sst2").load("test").texts, calls)
    b1 = [e for _, e in encode_batches(load_tokenizer(next(iter(arts.values()))), texts, 1)]
    junk = np.ones(flush_mb * 2**18, dtype=np.float32) if flush_mb else None
    for n in preds:
        for i in range(10):
            preds[n](b1[i])
    samples = {n: [] for n in timed}
    rng = random.Random(0)
    for s in range(0, calls, block):
        order = list(timed)
        rng.shuffle(order)
        for n in order:
            for i in range(s, min(s + block, calls)):
                if junk is not None:
                    junk += 1.0  # streams flush_mb through the caches, as another model's weights would
                t0 = time.perf_counter()
                preds[n](b1[i])
                samples[n].append((time.perf_counter() - t0) * 1e3)
    return {n: float(np.median(v)) for n, v in samples.items()}


def run(work: Path, repeats: int, calls: int) -> dict:
    jobs = []
    for cond, (loaded, timed, block, env, flush) in CONDITIONS.items():
        if loaded is None:  # one process per model
            jobs += [(cond, [m], [m], block, env, flush) for m in MODELS]
        else:
            jobs.append((cond, list(MODELS), list(MODELS) if timed == "both" else None, block, env, flush))
    got: dict = {}
    for r in range(repeats):
        k = r % len(jobs)
        for cond, loaded, timed, block, env, flush in jobs[k:] + jobs[:k]:
            for t in (timed and [timed]) or [[m] for m in loaded]:  # "idle": one process per timed model
                cmd = [sys.executable, __file__, "--child", str(work), ",".join(loaded), ",".join(t), str(block),
                       str(flush), str(calls)]
                e = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **env}
                p = subprocess.run(cmd, capture_output=True, text=True, env=e, check=True)
                for m, v in json.loads(p.stdout.strip().splitlines()[-1]).items():
                    got.setdefault(cond, {}).setdefault(m, []).append(v)
        print(f"repeat {r} done, load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    return got


def markdown(got: dict, command: str) -> str:
    lines = [f"Command: `{command}`. Load average at the end {os.getloadavg()[0]:.2f}.", "",
             "| condition | " + " | ".join(f"{m} p50 ms (median) | {m} / alone" for m in MODELS) + " |",
             "|---|" + "---|---|" * len(MODELS)]
    alone = {m: statistics.median(got["alone"][m]) for m in MODELS}
    for cond, ms in got.items():
        cells = []
        for m in MODELS:
            v = statistics.median(ms[m])
            cells += [f"{v:.2f}", f"{v / alone[m]:.3f}"]
        lines.append(f"| {cond} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if sys.argv[1:2] == ["--child"]:
        w, loaded, timed, block, flush, calls = sys.argv[2:8]
        print(json.dumps(_child(Path(w), loaded.split(","), timed.split(","), int(block), int(flush), int(calls))))
        sys.exit(0)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("bench-out/gate-check"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--report", type=Path)
    a = p.parse_args()
    res = run(a.work, a.repeats, a.calls)
    md = markdown(res, "python benchmarks/isolation_causes.py " + " ".join(sys.argv[1:]))
    print(md)
    if a.report:
        a.report.write_text(md + "\n")
        a.report.with_suffix(".json").write_text(json.dumps(res, indent=2))

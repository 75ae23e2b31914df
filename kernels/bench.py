"""``python -m kernels.bench --output DIR``: time the fused kernels against PyTorch on a CUDA GPU.

Every op is timed with ``triton.testing.do_bench`` (CUDA events, median) against eager
PyTorch, ``torch.compile`` and, for the weight-only GEMMs, cuBLAS fp16 and bitsandbytes
int8 / NF4. Achieved GB/s is given as a fraction of a measured ``copy_`` bandwidth and
TFLOP/s as a fraction of a measured large fp16 matmul, so rows read as "% of this GPU".
Writes DIR/results.md and DIR/results.json. Without CUDA it exits 2 with one line.
``--smoke`` runs tiny shapes on CPU under the Triton interpreter (wall-clock timer): it
checks that the harness works, its timings mean nothing.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

NO_CUDA = "no CUDA device: kernel benchmarks need a GPU"


@dataclass
class Row:
    op: str
    shape: str
    backend: str
    ms: float | None  # median; None when skipped
    gbps: float | None = None
    frac_copy_bw: float | None = None
    tflops: float | None = None
    frac_matmul_peak: float | None = None
    speedup_vs_eager: float | None = None  # eager ms / this ms (cublas-fp16 for the GEMMs)
    max_rel_err: float | None = None  # Triton output vs fp32 reference (vs eager fp16 for MiniLM)
    note: str = ""


def _cuda_timer(fn: Callable[[], object]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def _wall_timer(fn: Callable[[], object], reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_peaks(device: str, timer, smoke: bool) -> dict[str, float]:
    """Copy bandwidth (read + write bytes) and fp16 (fp32 on CPU) matmul throughput, measured here."""
    import torch

    n_bytes = 1 << (20 if smoke else 30)  # 1 GiB: far beyond L2
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_ms = timer(lambda: dst.copy_(src))
    n = 256 if smoke else 8192
    dtype = torch.float32 if smoke else torch.float16
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    mm_ms = timer(lambda: a @ b)
    return {"copy_gbps": 2 * n_bytes / copy_ms / 1e6, "matmul_tflops": 2 * n**3 / mm_ms / 1e9}


def run_case(case, timer, peaks: dict[str, float]) -> list[Row]:
    rows, times = [], {}
    errs = case.check() if case.check else {}
    for backend, fn in case.fns.items():
        if isinstance(fn, str):
            rows.append(Row(case.op, case.shape, backend, None, note=fn))
            continue
        fn()  # compile / autotune outside the timed region
        ms = timer(fn)
        times[backend] = ms
        row = Row(case.op, case.shape, backend, ms)
        n_bytes = case.bytes.get(backend, case.bytes.get("*"))
        if n_bytes:
            row.gbps = n_bytes / ms / 1e6
            row.frac_copy_bw = row.gbps / peaks["copy_gbps"]
        if case.flops:
            row.tflops = case.flops / ms / 1e9
            row.frac_matmul_peak = row.tflops / peaks["matmul_tflops"]
        row.max_rel_err = errs.get(backend)
        rows.append(row)
    base = times.get("eager", times.get("cublas-fp16"))
    for row in rows:
        if row.ms and base:
            row.speedup_vs_eager = base / row.ms
    return rows


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def write_report(out: Path, rows: list[Row], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1))
    lines = [f"# kernels benchmark: {meta['device']}, {meta['date']}", "",
             f"torch {meta['torch']}, triton {meta['triton']}, bitsandbytes {meta['bitsandbytes']}. "
             f"Measured peaks: copy {meta['copy_gbps']:.0f} GB/s, {meta['peak_dtype']} matmul "
             f"{meta['matmul_tflops']:.1f} TFLOP/s. Times are medians of {meta['timer']}; GB/s counts the ideal "
             "bytes of each backend; max rel err is vs the fp32 reference (vs eager fp16 for MiniLM).", "",
             "| op | shape | backend | ms | GB/s | % copy BW | TFLOP/s | % matmul peak | vs eager | max rel err "
             "| note |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        pct = lambda f: "" if f is None else f"{100 * f:.0f}%"  # noqa: E731
        lines.append(f"| {r.op} | {r.shape} | {r.backend} | {_fmt(r.ms, '.4f')} | {_fmt(r.gbps, '.0f')} | "
                     f"{pct(r.frac_copy_bw)} | {_fmt(r.tflops, '.1f')} | {pct(r.frac_matmul_peak)} | "
                     f"{_fmt(r.speedup_vs_eager, '.2f')}{'x' if r.speedup_vs_eager else ''} | "
                     f"{_fmt(r.max_rel_err, '.1e')} | {r.note} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def run_benchmarks(out: Path, ops: list[str], smoke: bool = False) -> list[Row]:
    """Run the selected ops' cases and write the report; CUDA unless ``smoke``."""
    import torch

    if smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernel modules are imported (below)
    import triton

    from . import _bench_cases

    device = "cpu" if smoke else "cuda"
    timer = _wall_timer if smoke else _cuda_timer
    ctx = _bench_cases.Ctx(device=device, smoke=smoke, dtype=torch.float32 if smoke else torch.float16)
    peaks = measure_peaks(device, timer, smoke)
    rows: list[Row] = []
    for op in ops:
        for case in _bench_cases.ALL[op](ctx):
            rows.extend(run_case(case, timer, peaks))
            print(f"{case.op} {case.shape}: done", file=sys.stderr)
    try:
        import bitsandbytes

        bnb_version = bitsandbytes.__version__
    except ImportError:
        bnb_version = "not installed"
    meta = {"device": "CPU (Triton interpreter, --smoke)" if smoke else torch.cuda.get_device_name(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "triton": triton.__version__, "bitsandbytes": bnb_version,
            "python": platform.python_version(), "dtype": str(ctx.dtype),
            "peak_dtype": "fp32" if smoke else "fp16",
            "timer": "wall clock (--smoke: meaningless)" if smoke else "triton.testing.do_bench (CUDA events)",
            **peaks}
    write_report(out, rows, meta)
    return rows


def main(argv: list[str] | None = None, prog: str = "python -m kernels.bench") -> int:
    from chain.cli import add_common

    from ._bench_cases import ALL

    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_common(p, output=True, output_default="kernels-bench-out", output_help="results.md and results.json")
    p.add_argument("--ops", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU via TRITON_INTERPRET (harness check)")
    args = p.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    unknown = sorted(set(ops) - set(ALL))
    if unknown:
        p.error(f"unknown ops {unknown}; choose from {sorted(ALL)}")
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            print(NO_CUDA, file=sys.stderr)
            return 2
    run_benchmarks(args.output, ops, smoke=args.smoke)
    print(f"wrote {args.output / 'results.md'} and results.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

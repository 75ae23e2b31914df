"""What a measurement ran on: recorded in every results.json so runs can be compared honestly.

``cpu``/``cores``/``threads`` decide whether absolute times are comparable
(``python -m bench compare --absolute``); ``cpu_flags`` explain int8 differences across
machines (VNNI/AMX change both speed and, slightly, int8 numerics); ``loadavg`` says how
busy the host was.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from .artifact import library_versions

# ISA features that change int8/fp32 kernel choice in PyTorch (fbgemm/oneDNN) and ONNX Runtime
INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16")


def _cpuinfo() -> tuple[str, list[str]]:
    cpu, flags = None, None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu is None:
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and flags is None:
                have = set(line.split(":", 1)[1].split())
                flags = [f for f in INTERESTING_FLAGS if f in have]
    except OSError:
        pass
    return cpu or platform.processor(), flags or []


def cpu_steal_s() -> float | None:
    """Seconds of CPU time the hypervisor has taken from this VM since boot (``steal`` in
    /proc/stat, all CPUs); None where there is no /proc/stat. A difference over a timed run
    says whether a slow figure was the host's, not the code's."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def cpu_flags() -> list[str]:
    """This CPU's flags among ``INTERESTING_FLAGS`` (empty where /proc/cpuinfo is unreadable)."""
    return _cpuinfo()[1]


def native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512_BF16 dot products or AMX tiles), so bf16
    autocast runs faster than fp32 instead of being emulated."""
    return bool(set(cpu_flags()) & {"avx512_bf16", "amx_bf16"})


def int8_saturates() -> bool:
    """Whether u8 x s8 int8 GEMMs here may saturate: x86 with AVX2 but no VNNI/AMX.

    Without VNNI, ONNX Runtime's (and oneDNN's) AVX2 kernels sum u8*s8 pairs into int16
    (VPMADDUBSW), which overflows for large weights; 7-bit weights (reduce_range) fit.
    """
    flags = set(cpu_flags())
    return "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def environment(threads: int | None = None, device: str = "cpu") -> dict:
    """The one environment record of chain and bench results (``threads`` None = torch's count)."""
    import torch

    threads = threads if threads is not None else torch.get_num_threads()

    cpu, flags = _cpuinfo()
    env = {"cpu": cpu, "cores": os.cpu_count(), "threads": threads,
           "torch_threads": torch.get_num_threads(), "device": device,
           "platform": platform.platform(), "cpu_flags": flags,
           "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
           "torch_quantized_engine": torch.backends.quantized.engine,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
           "date": time.strftime("%Y-%m-%d"), "time": time.strftime("%H:%M:%S%z"),
           "versions": library_versions()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env

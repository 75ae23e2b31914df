"""Worker-process timing: one model per spawned process, driven in rotation by the bench process.

Timed in one process, a model shares thread pools, allocator and caches with every other
model loaded there, and its figures then depend on what else bench happened to load. Here
each variant lives in a worker process of its own (``python -m bench.worker``: a fresh
interpreter that inherits only the environment, and never re-imports the caller's script
the way multiprocessing's ``spawn`` does). The bench process tokenizes once,
sends the same encoded inputs to every worker once, then drives the workers in turn: in
round ``k`` each worker (order reshuffled per round, seeded) times ``block`` calls on inputs
``k*block ..`` and replies with its per-call times, measured inside the worker, so the pipe
is never in a sample. Only one worker runs at a time, so they never compete for cores;
drift of the machine still hits all alike, and sample ``i`` of every variant is input ``i``,
so ratios stay paired (``Timing.ratio``).

A worker that fails to load, raises, crashes or stops answering (``timeout_s``) leaves the
rotation with its reason; the others go on. Every worker is stopped (then killed) on exit,
on error and on Ctrl-C.

>>> with WorkerPool({"fp32": art_a, "onnx-int8": art_b}, threads=2) as pool:
...     pool.send_inputs("b1", batches)
...     t = pool.time_rotation("b1", n_calls=300, warmup=10)
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

import numpy as np

from .timing import Timing, clock_for, timing_from_samples


class WorkerError(RuntimeError):
    """A worker could not load its model, raised in a call, died, or did not answer in time."""


@dataclass
class WorkerInfo:
    """What a worker measured about itself (all in the worker's own process)."""
    backend: str = ""
    load_s: float = float("nan")  # load_predictor, wall time, its runtime library already imported
    load_rss_mb: float = float("nan")  # RSS the model added (libraries were imported before)
    first_call_ms: dict[str, float] = field(default_factory=dict)  # per input kind: the cold first call
    peak_rss_mb: float = float("nan")  # the worker's own peak RSS (VmHWM) at the end
    threads: dict = field(default_factory=dict)
    omp_wait_policy: str | None = None
    ort_spinning: bool = False  # ONNX Runtime sessions of this worker spin (compress.onnx_export.spin_alone)
    pid: int = 0


def _serve(conn, artifact_dir: str, threads: int, trust_remote_code: bool, device: str) -> None:
    """The worker's loop: load one model, then answer (op, ...) messages until "stop"."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the bench process's to handle
    # as `python -m bench` does, before torch loads: OpenMP threads sleep, not spin, between calls
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from chain.artifact import Artifact
        from chain.runtime import load_predictor
        from .timing import current_rss_mb, fixed_threads, peak_rss_mb, pin_interop_threads, thread_counts

        pin_interop_threads(threads)  # a fresh interpreter: nothing has run on the pool yet

        art = Artifact.load(artifact_dir)
        # its runtime imported before the clock starts: load_s and load_rss are the model's own
        # one model in this process: ORT's threads may spin during a call, as in a user's own process
        spins = art.format == "onnx"
        if spins:
            import onnxruntime  # noqa: F401

            from compress.onnx_export import spin_alone

            spin_alone()
        else:
            from transformers import AutoModelForSequenceClassification  # noqa: F401
        # imports are most of a worker's start (transformers ~11 s on a 2-vCPU EPYC) and every
        # worker runs them at once; the pool then asks for the loads one at a time
        conn.send(("ok", "imported"))
        op, *_ = conn.recv()
        if op != "load":
            conn.send(("ok", None))
            return
        rss0, t0 = current_rss_mb(), time.perf_counter()
        pred = load_predictor(art, threads, trust_remote_code)
        load_s, load_rss = time.perf_counter() - t0, current_rss_mb() - rss0
        clock = clock_for(device)
        with fixed_threads(threads):
            conn.send(("ok", {"backend": pred.backend, "load_s": load_s, "load_rss_mb": load_rss,
                              "pid": os.getpid(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                              "ort_spinning": spins}))
            inputs: dict[str, list] = {}
            while True:
                op, *args = conn.recv()
                if op == "inputs":
                    inputs[args[0]] = args[1]
                    reply = None
                elif op == "run":  # run(kind, indices) -> per-call ms, timed here
                    batches, reply = inputs[args[0]], []
                    for i in args[1]:
                        stop = clock()
                        pred(batches[i % len(batches)])
                        reply.append(stop())
                elif op == "info":
                    reply = {"peak_rss_mb": peak_rss_mb(), "threads": thread_counts()}
                elif op == "stop":
                    conn.send(("ok", None))
                    return
                else:
                    raise ValueError(f"unknown worker op {op!r}")
                conn.send(("ok", reply))
    except (EOFError, BrokenPipeError):  # the bench process went away: nothing to tell it
        return
    except BaseException as e:  # noqa: BLE001  any failure is reported, then the worker ends
        try:
            conn.send(("error", f"{type(e).__name__}: {e}"))
        except (OSError, ValueError):
            pass


class Worker:
    """The bench process's handle on one worker process (a socket pair carries pickled messages)."""

    POLL_S = 0.2  # how often a wait checks that the worker is still alive

    def __init__(self, name: str, artifact_dir, threads: int, trust_remote_code: bool = False,
                 device: str = "cpu", timeout_s: float = 600.0):
        self.name, self.timeout_s, self.info, self.error = name, timeout_s, WorkerInfo(), None
        self.stop_sent = False
        ours, theirs = socket.socketpair()
        self.stderr = tempfile.TemporaryFile()  # a file, not a pipe: a chatty worker can never block on it
        cmd = [sys.executable, "-m", "bench.worker", str(theirs.fileno()), str(artifact_dir), str(threads),
               "1" if trust_remote_code else "0", device]
        self.proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.stderr)
        theirs.close()
        self.conn = Connection(ours.detach())

    def request(self, *msg):
        """Send one message and wait for its reply; WorkerError if the worker fails or falls silent."""
        try:
            self.conn.send(msg)
        except (OSError, ValueError) as e:
            raise WorkerError(self._death(f"could not be sent to ({e})")) from None
        return self.reply()

    def reply(self):
        deadline = time.monotonic() + self.timeout_s
        while not wait([self.conn], min(self.POLL_S, max(0.0, deadline - time.monotonic()))):
            if self.proc.poll() is not None and not self.conn.poll():
                raise WorkerError(self._death("exited"))
            if time.monotonic() >= deadline:
                raise WorkerError(f"worker gave no reply in {self.timeout_s:g} s (killed)")
        try:
            status, payload = self.conn.recv()
        except (EOFError, OSError):
            raise WorkerError(self._death("closed its socket")) from None
        if status == "error":
            raise WorkerError(payload)
        return payload

    def _death(self, what: str) -> str:
        try:
            code = self.proc.wait(2)
        except subprocess.TimeoutExpired:
            code = None
        self.stderr.seek(0)
        err = self.stderr.read().decode(errors="replace").strip().splitlines()
        tail = f": {err[-1]}" if err else ""
        if code is not None and code < 0:
            return f"worker {what}: killed by {signal.Signals(-code).name}{tail}"
        return f"worker {what} with exit code {code}{tail}"

    def ask_stop(self) -> None:
        """Tell the worker to stop without waiting for it (``WorkerPool.close`` asks them all first:
        each takes about a second to tear its runtime down, and they do it side by side)."""
        if self.proc.poll() is None and self.error is None and not self.stop_sent:
            try:
                self.conn.send(("stop",))
                self.stop_sent = True
            except (OSError, ValueError):
                pass

    def close(self, graceful: bool = True) -> None:
        """Ask the worker to stop; terminate, then kill, one that does not (or at once if not ``graceful``)."""
        if graceful and self.proc.poll() is None and self.error is None:
            self.ask_stop()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for end in (self.proc.terminate, self.proc.kill):
            if self.proc.poll() is not None:
                break
            end()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                pass
        self.conn.close()
        self.stderr.close()


class WorkerPool:
    """One worker per variant; ``failed`` maps a variant that left the rotation to its reason."""

    def __init__(self, artifacts: dict, threads: int, trust_remote_code: bool = False, device: str = "cpu",
                 timeout_s: float = 600.0):
        self.artifacts, self.threads, self.trc, self.device = artifacts, threads, trust_remote_code, device
        self.timeout_s = timeout_s
        self.workers: dict[str, Worker] = {}
        self.failed: dict[str, str] = {}

    def __enter__(self) -> "WorkerPool":
        try:
            for name, art_dir in self.artifacts.items():  # every interpreter starts importing at once
                self.workers[name] = Worker(name, art_dir, self.threads, self.trc, self.device, self.timeout_s)
            for w in self.workers.values():
                self._call(w, w.reply)
            for name in self.alive:  # then one load at a time, so each load_s is the model's own
                self._call(self.workers[name], lambda w=self.workers[name]: _fill(w.info, w.request("load")))
        except BaseException:
            self.close(graceful=False)
            raise
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(graceful=exc_type is None)

    def close(self, graceful: bool = True) -> None:
        """Stop every worker; after an error or Ctrl-C, terminate them without asking."""
        if graceful:
            for w in self.workers.values():
                w.ask_stop()
        for w in self.workers.values():
            w.close(graceful)

    @property
    def alive(self) -> list[str]:
        return [n for n in self.workers if n not in self.failed]

    def _call(self, w: Worker, fn):
        """Run ``fn`` (one request) on ``w``; on WorkerError the worker leaves the rotation."""
        try:
            return fn()
        except WorkerError as e:
            w.error = str(e)
            self.failed[w.name] = str(e)
            w.close()
            return None

    def run(self, name: str, kind: str, indices: list[int]) -> list[float] | None:
        """One request to worker ``name``: its per-call ms on ``indices``, or None if it left the rotation."""
        w = self.workers[name]
        return self._call(w, lambda: w.request("run", kind, indices))

    def send_inputs(self, kind: str, batches: list[dict]) -> None:
        """The same encoded batches to every worker, once."""
        for n in self.alive:
            self._call(self.workers[n], lambda w=self.workers[n]: w.request("inputs", kind, batches))

    def time_rotation(self, kind: str, n_calls: int, warmup: int = 5, block: int = 1,
                      shuffle_seed: int | None = 0, turn_warmup: int = 0, offset: int = 0) -> Timing:
        """Like ``timing.time_interleaved``, over the workers: ``block`` calls per worker per turn,
        after ``turn_warmup`` untimed ones (in the same request), on inputs ``offset ..``.

        The first warm-up call of each kind is kept as ``first_call_ms`` (the cold call a user
        pays once); warm-up calls are not samples. ``warmup=0`` skips the warm-up (a later
        segment of a run already warmed up, as ``bench.paired_alone`` times them).
        """
        for n in self.alive if warmup > 0 else ():
            w = self.workers[n]
            first = self._call(w, lambda w=w: w.request("run", kind, [0]))
            if first is not None:
                w.info.first_call_ms.setdefault(kind, first[0])
                if warmup > 1:
                    self._call(w, lambda w=w: w.request("run", kind, list(range(1, warmup))))
        samples: dict[str, list[float]] = {n: [] for n in self.alive}
        rng = random.Random(shuffle_seed)
        for start in range(0, n_calls, block):
            order = self.alive
            if shuffle_seed is not None:
                rng.shuffle(order)
            idx = list(range(offset + start, offset + min(start + block, n_calls)))
            for n in order:
                # the untimed call(s) in the same request as the timed ones: the worker goes from
                # warm-up to timing without sleeping on its socket in between, as a model
                # running alone does (ORT int8 batch-1 p50 vs alone, paired in time: 1.13x with
                # a separate request, 1.10x without; 1.01x with 10 calls per turn as well,
                # docs/results/isolation-paired-2026-12-04-avx2.md)
                got = self._call(self.workers[n],
                                 lambda w=self.workers[n]: w.request("run", kind, idx[:1] * turn_warmup + idx))
                if got is not None:
                    samples[n] += got[turn_warmup:]
        for n in self.alive:  # peak RSS and threads as the worker saw them
            got = self._call(self.workers[n], lambda w=self.workers[n]: w.request("info"))
            if got:
                self.workers[n].info.peak_rss_mb, self.workers[n].info.threads = got["peak_rss_mb"], got["threads"]
        kept = {n: np.asarray(s, dtype=np.float64) for n, s in samples.items() if n in self.alive}
        return timing_from_samples(kept, {n: self.workers[n].info.threads for n in kept},
                                   max((self.workers[n].info.peak_rss_mb for n in kept), default=float("nan")),
                                   device=self.device)


def _fill(info: WorkerInfo, ready: dict) -> None:
    for k, v in ready.items():
        setattr(info, k, v)


def main(argv: list[str]) -> None:
    """``python -m bench.worker FD ARTIFACT_DIR THREADS TRUST_REMOTE_CODE DEVICE`` (started by ``Worker``)."""
    fd, art, threads, trc, device = argv
    _serve(Connection(int(fd)), art, int(threads), trc == "1", device)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # before any import: Ctrl-C is the bench process's
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(sys.argv[1:])

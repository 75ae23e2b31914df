"""Dynamic micro-batching: texts from concurrent requests share one model call.

A request's texts join one bounded queue; a single worker takes up to
``max_batch_size`` texts as soon as that many wait, or when the oldest has waited
``max_queue_delay_ms``, runs the model in a worker thread (ONNX Runtime releases the
GIL, so the event loop keeps accepting requests meanwhile) and hands every request its
rows. The queue is bounded in texts: a request that does not fit is refused whole
(``QueueFull`` -> HTTP 503), never dropped or split across a refusal. ``stop()`` lets
the worker finish everything already queued, so a graceful shutdown answers every
request it accepted.

>>> b = MicroBatcher(clf.probabilities, BatchConfig(max_batch_size=32, max_queue_delay_ms=5))
>>> await b.start(); probs = await b.submit(["great", "awful"]); await b.stop()
"""
from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np


class QueueFull(Exception):
    """The queue cannot take this request now; the client should retry later (503)."""


class ShuttingDown(Exception):
    """The server is draining for shutdown and accepts no new work (503)."""


@dataclass
class BatchConfig:
    max_batch_size: int = 32
    max_queue_delay_ms: float = 5.0
    max_queue: int = 1024  # texts waiting, across requests

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue < self.max_batch_size:
            raise ValueError(f"need 1 <= max_batch_size <= max_queue, got {self.max_batch_size}, {self.max_queue}")
        if self.max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms}")


class _Request:
    __slots__ = ("future", "rows", "left", "enqueued")

    def __init__(self, n: int, loop: asyncio.AbstractEventLoop):
        self.future = loop.create_future()
        self.rows: list = [None] * n
        self.left = n
        self.enqueued = time.perf_counter()


@dataclass
class BatchStats:
    size: int
    queue_s: list[float]  # per text: enqueue -> batch start
    model_s: float


class MicroBatcher:
    def __init__(self, fn: Callable[[list[str]], np.ndarray], cfg: BatchConfig,
                 on_batch: Callable[[BatchStats, np.ndarray], None] | None = None):
        self.fn, self.cfg, self.on_batch = fn, cfg, on_batch
        self._pending: collections.deque = collections.deque()  # (text, request, row)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    @property
    def depth(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Refuse new work, finish what is queued, then end the worker."""
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task
        self._pool.shutdown(wait=True)

    async def submit(self, texts: list[str]) -> np.ndarray:
        """Rows of ``fn(texts)``, computed in whatever batches the queue forms."""
        if self._stopping or self._task is None:
            raise ShuttingDown("the server is shutting down")
        if len(self._pending) + len(texts) > self.cfg.max_queue:
            raise QueueFull(f"queue full ({len(self._pending)} of {self.cfg.max_queue} texts waiting); retry later")
        req = _Request(len(texts), asyncio.get_running_loop())
        self._pending.extend((t, req, i) for i, t in enumerate(texts))
        self._wake.set()
        return await req.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            deadline = self._pending[0][1].enqueued + self.cfg.max_queue_delay_ms / 1e3
            while len(self._pending) < self.cfg.max_batch_size and not self._stopping:
                wait = deadline - time.perf_counter()
                if wait <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except asyncio.TimeoutError:
                    break
            n = min(self.cfg.max_batch_size, len(self._pending))
            batch = [self._pending.popleft() for _ in range(n)]
            start = time.perf_counter()
            try:
                out = await loop.run_in_executor(self._pool, self.fn, [t for t, _, _ in batch])
            except Exception as e:  # the model failed: every request in the batch hears why
                for _, req, _ in batch:
                    if not req.future.done():
                        req.future.set_exception(e)
                continue
            model_s = time.perf_counter() - start
            for (_, req, i), row in zip(batch, out):
                req.rows[i] = row
                req.left -= 1
                if req.left == 0 and not req.future.done():
                    req.future.set_result(np.stack(req.rows))
            if self.on_batch is not None:
                self.on_batch(BatchStats(n, [start - r.enqueued for _, r, _ in batch], model_s), out)

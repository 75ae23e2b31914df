"""``/metrics``: what the server did, in the Prometheus text format (prometheus-client).

Every series is prefixed ``chainpress_``:

* traffic: ``requests_total{endpoint,code}``, ``rejections_total{reason}``;
* latency histograms (seconds): ``request_seconds{endpoint}`` (arrival -> answer),
  ``queue_seconds`` (enqueue -> batch start), ``model_seconds`` (one batch's model call);
* batching: ``batch_size`` histogram, ``queue_depth`` gauge (texts waiting);
* outputs: ``predictions_total{label}``, ``confidence`` histogram (top probability);
* drift: ``drift_psi{signal="label"|"confidence"}``, ``drift_window_samples``,
  ``drift_alert`` (1 while over the threshold), ``drift_alerts_total``;
* SLO: ``slo_latency_p99_seconds`` over the last ``slo_window`` requests,
  ``slo_breach`` (1 while p99 > target), ``slo_breaches_total``.

With ``--workers N`` each worker process writes its series to ``PROMETHEUS_MULTIPROC_DIR``
and ``/metrics`` sums counters over workers; gauges report the largest live worker's
value (each worker watches drift over its own share of the traffic).
"""
from __future__ import annotations

import collections
import logging
import os
import threading

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

from .batching import BatchStats
from .drift import DriftMonitor

log = logging.getLogger("chainpress.deploy.slo")
LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CONFIDENCE_BUCKETS = (.5, .55, .6, .65, .7, .75, .8, .85, .9, .95, .99, 1.0)


def multiprocess_mode() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class SloMonitor:
    """p99 of the last ``window`` request latencies against a target; warns on a breach."""

    def __init__(self, target_s: float, window: int = 1000, min_samples: int = 50, every: int = 20):
        self.target_s, self.min_samples, self.every = target_s, min_samples, every
        self._lat: collections.deque = collections.deque(maxlen=window)
        self._n = 0
        self.p99 = 0.0
        self.breach = False
        self.breaches = 0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> bool | None:
        """Record one latency; return True on a new breach, False on recovery, else None."""
        with self._lock:
            self._lat.append(seconds)
            self._n += 1
            if len(self._lat) < self.min_samples or self._n % self.every:
                return None
            self.p99 = float(np.quantile(np.fromiter(self._lat, float), 0.99))
            was, self.breach = self.breach, self.p99 > self.target_s
            if self.breach and not was:
                self.breaches += 1
                log.warning("latency SLO breach: p99 %.1f ms > %.1f ms over the last %d requests",
                            self.p99 * 1e3, self.target_s * 1e3, len(self._lat))
                return True
            if was and not self.breach:
                log.info("latency back within SLO: p99 %.1f ms", self.p99 * 1e3)
                return False
            return None


class Metrics:
    def __init__(self, labels: list[str], drift: DriftMonitor | None, slo: SloMonitor):
        self.labels, self.drift, self.slo = labels, drift, slo
        mp = multiprocess_mode()
        # one registry per app (tests run several servers in one process); in multiprocess
        # mode values live in files and /metrics collects them from there
        self.registry = CollectorRegistry()
        r = {"registry": None if mp else self.registry}
        g = (lambda mode: {"multiprocess_mode": mode} if mp else {})
        p = "chainpress_"
        self.requests = Counter(p + "requests_total", "HTTP requests answered", ["endpoint", "code"], **r)
        self.rejections = Counter(p + "rejections_total", "Requests refused (queue full, too large, bad input)",
                                  ["reason"], **r)
        self.request_s = Histogram(p + "request_seconds", "Arrival to answer", ["endpoint"], buckets=LATENCY_BUCKETS, **r)
        self.queue_s = Histogram(p + "queue_seconds", "Enqueue to batch start, per text", buckets=LATENCY_BUCKETS, **r)
        self.model_s = Histogram(p + "model_seconds", "One batch's model call", buckets=LATENCY_BUCKETS, **r)
        self.batch_size = Histogram(p + "batch_size", "Texts per model call", buckets=BATCH_BUCKETS, **r)
        self.queue_depth = Gauge(p + "queue_depth", "Texts waiting for a batch", **r, **g("livesum"))
        self.predictions = Counter(p + "predictions_total", "Predicted labels", ["label"], **r)
        self.confidence = Histogram(p + "confidence", "Top softmax probability", buckets=CONFIDENCE_BUCKETS, **r)
        self.drift_psi = Gauge(p + "drift_psi", "PSI of the live window vs the dev-set reference", ["signal"],
                               **r, **g("livemax"))
        self.drift_samples = Gauge(p + "drift_window_samples", "Predictions in the drift window", **r, **g("livemax"))
        self.drift_alert = Gauge(p + "drift_alert", "1 while drift PSI is over the threshold", **r, **g("livemax"))
        self.drift_alerts = Counter(p + "drift_alerts_total", "Drift warnings logged", **r)
        self.slo_p99 = Gauge(p + "slo_latency_p99_seconds", "p99 request latency over the SLO window", **r, **g("livemax"))
        self.slo_breach = Gauge(p + "slo_breach", "1 while p99 latency is over the SLO target", **r, **g("livemax"))
        self.slo_breaches = Counter(p + "slo_breaches_total", "SLO breaches logged", **r)
        for label in labels:
            self.predictions.labels(label=label)  # so every label appears from the start, at 0

    def on_batch(self, stats: BatchStats, probs: np.ndarray) -> None:
        """Called by the batcher after each model call (in the event loop thread)."""
        self.batch_size.observe(stats.size)
        self.model_s.observe(stats.model_s)
        for q in stats.queue_s:
            self.queue_s.observe(q)
        top = probs.argmax(-1)
        conf = probs.max(-1)
        for k, c in zip(*np.unique(top, return_counts=True)):
            self.predictions.labels(label=self.labels[int(k)]).inc(int(c))
        for c in conf:
            self.confidence.observe(float(c))
        if self.drift is not None:
            before = self.drift.alerts
            s = self.drift.observe(top, conf)
            self.drift_psi.labels(signal="label").set(s.label_psi)
            self.drift_psi.labels(signal="confidence").set(s.confidence_psi)
            self.drift_samples.set(s.samples)
            self.drift_alert.set(1 if s.alert else 0)
            if self.drift.alerts > before:
                self.drift_alerts.inc()

    def on_request(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, code=str(code)).inc()
        self.request_s.labels(endpoint=endpoint).observe(seconds)
        if code == 200 and self.slo.observe(seconds):
            self.slo_breaches.inc()
        self.slo_p99.set(self.slo.p99)
        self.slo_breach.set(1 if self.slo.breach else 0)

    def render(self, queue_depth: int) -> bytes:
        self.queue_depth.set(queue_depth)
        if multiprocess_mode():
            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
            return generate_latest(reg)
        return generate_latest(self.registry)

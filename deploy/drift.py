"""Drift: how far live predictions have moved from the dev-set reference in the bundle.

Two signals, both from the model's outputs (no labels are needed in production): the
distribution of predicted labels and of confidence (the top softmax probability).
Each is compared with the dev split's by the population stability index,
``PSI = sum((p - q) * ln(p / q))`` over bins; the usual reading is < 0.1 stable,
0.1-0.25 moderate, > 0.25 a real shift. Confidence bins are the dev set's deciles, so
each reference bin holds a tenth of the dev sentences and a live window of a few
hundred predictions fills every bin when nothing changed.

>>> ref = reference_from_probs(dev_probs, split="dev", task="sst2")
>>> mon = DriftMonitor(ref, window=500, threshold=0.2)
>>> mon.observe(labels=[1, 0], confidences=[0.97, 0.61])
"""
from __future__ import annotations

import collections
import logging
import math
import threading
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("chainpress.deploy.drift")
EPS = 1e-4  # floor for an empty bin, so PSI stays finite (ln(p/EPS) caps one bin's term)
CONFIDENCE_BINS = 10


def psi(live: np.ndarray, ref: np.ndarray) -> float:
    """Population stability index of two histograms (counts or proportions)."""
    p = np.asarray(live, dtype=np.float64)
    q = np.asarray(ref, dtype=np.float64)
    p = np.maximum(p / max(p.sum(), 1e-12), EPS)
    q = np.maximum(q / max(q.sum(), 1e-12), EPS)
    return float(np.sum((p - q) * np.log(p / q)))


def reference_from_probs(probs: np.ndarray, split: str, task: str | None) -> dict:
    """What ``bundle.json`` stores: label and confidence histograms of a labelled split."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = probs.argmax(-1)
    conf = probs.max(-1)
    label_freq = np.bincount(labels, minlength=probs.shape[1]) / len(labels)
    inner = np.unique(np.quantile(conf, np.linspace(0, 1, CONFIDENCE_BINS + 1)[1:-1]))
    conf_freq = np.bincount(np.searchsorted(inner, conf, side="right"), minlength=len(inner) + 1) / len(conf)
    return {"task": task, "split": split, "examples": int(len(labels)),
            "label_freq": [round(float(x), 6) for x in label_freq],
            "confidence_edges": [round(float(x), 6) for x in inner],
            "confidence_freq": [round(float(x), 6) for x in conf_freq],
            "mean_confidence": round(float(conf.mean()), 6)}


@dataclass
class DriftState:
    samples: int
    label_psi: float
    confidence_psi: float
    mean_confidence: float
    alert: bool

    @property
    def psi(self) -> float:
        return max(self.label_psi, self.confidence_psi)


class DriftMonitor:
    """A sliding window of the last ``window`` predictions compared with the reference.

    ``observe`` is called by the batcher after every batch; it logs one warning when the
    window crosses ``threshold`` (and again every ``alert_every_s`` while it stays above),
    and one info line when it comes back.
    """

    def __init__(self, reference: dict, window: int = 500, threshold: float = 0.2,
                 min_samples: int = 100, alert_every_s: float = 60.0):
        if window < min_samples or min_samples < 1:
            raise ValueError(f"need window >= min_samples >= 1, got window={window}, min_samples={min_samples}")
        self.ref = reference
        self.threshold = threshold
        self.min_samples = min_samples
        self.alert_every_s = alert_every_s
        self._edges = np.asarray(reference["confidence_edges"], dtype=np.float64)
        self._labels: collections.deque = collections.deque(maxlen=window)
        self._conf: collections.deque = collections.deque(maxlen=window)
        self._lock = threading.Lock()
        self._alerting = False
        self._last_alert = -math.inf
        self.alerts = 0
        self.state = DriftState(0, 0.0, 0.0, 0.0, False)

    def observe(self, labels, confidences) -> DriftState:
        with self._lock:
            self._labels.extend(int(x) for x in labels)
            self._conf.extend(float(x) for x in confidences)
            self.state = self._compute()
            self._maybe_log(self.state)
            return self.state

    def _compute(self) -> DriftState:
        n = len(self._labels)
        if n < self.min_samples:
            return DriftState(n, 0.0, 0.0, float(np.mean(self._conf)) if n else 0.0, False)
        k = len(self.ref["label_freq"])
        live_labels = np.bincount(np.fromiter(self._labels, int, n), minlength=k)
        conf = np.fromiter(self._conf, float, n)
        live_conf = np.bincount(np.searchsorted(self._edges, conf, side="right"), minlength=len(self._edges) + 1)
        lp, cp = psi(live_labels, self.ref["label_freq"]), psi(live_conf, self.ref["confidence_freq"])
        return DriftState(n, lp, cp, float(conf.mean()), max(lp, cp) > self.threshold)

    def _maybe_log(self, s: DriftState) -> None:
        now = time.monotonic()
        if s.alert and (not self._alerting or now - self._last_alert >= self.alert_every_s):
            self.alerts += 1
            self._last_alert = now
            log.warning("drift alert: PSI %.3f > %.2f over the last %d predictions (labels %.3f, confidence "
                        "%.3f; mean confidence %.3f vs %.3f on the %s split)", s.psi, self.threshold, s.samples,
                        s.label_psi, s.confidence_psi, s.mean_confidence, self.ref.get("mean_confidence", 0.0),
                        self.ref.get("split"))
        elif not s.alert and self._alerting:
            log.info("drift back under threshold: PSI %.3f over the last %d predictions", s.psi, s.samples)
        self._alerting = s.alert

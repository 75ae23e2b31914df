"""One way to run a bundle: its tokenizer and an ONNX Runtime (or OpenVINO) session.

The server, the batch job and the export checks all go through ``Classifier``, so an
answer from ``/predict`` and a row written by ``predict`` come from the same code.
Tokenization pads each call's texts to its own longest text (never to ``max_length``):
callers that group texts of similar length (the micro-batcher, length buckets) pay
for the tokens they have.

>>> clf = Classifier(Bundle.load("out/bundle"))
>>> probs = clf.probabilities(["a gripping film", "dull"])   # (2, num_labels)
"""
from __future__ import annotations

import numpy as np

from .bundle import Bundle


def ort_session(model_path, threads: int = 1):
    """compress' session (fixed threads, spinning off), imported only when a model is loaded,
    so importing deploy loads no model library."""
    from compress.onnx_export import ort_session as session

    return session(model_path, threads)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Classifier:
    def __init__(self, bundle: Bundle, threads: int = 1):
        from transformers import AutoTokenizer

        self.bundle = bundle
        self.labels = bundle.labels
        self.max_length = bundle.max_length
        self.tokenizer = AutoTokenizer.from_pretrained(str(bundle.path))
        if bundle.model_file.suffix == ".xml":  # the openvino target
            from .openvino_target import OpenVinoSession

            self.session = OpenVinoSession(bundle.model_file, threads, bundle.meta["model_info"]["precision"])
        else:
            self.session = ort_session(bundle.model_file, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def logits(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_labels) float32 logits; texts padded to their longest."""
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="np")
        feed = {k: np.asarray(enc[k], dtype=np.int64) for k in self.input_names}
        return self.session.run(None, feed)[0].astype(np.float32)

    def probabilities(self, texts: list[str]) -> np.ndarray:
        return softmax(self.logits(texts))

    @property
    def tasks(self) -> dict[str, dict]:
        """A multi-task bundle's {task: {"output", "labels"}} (own task first); {} otherwise."""
        return self.bundle.tasks

    def task_probabilities(self, texts: list[str]) -> dict[str, np.ndarray]:
        """{task: (len(texts), its labels) probabilities} of every head, from ONE encoder pass
        (one session run computing every output); a single-task bundle: {its task: probs}."""
        if not self.tasks:
            return {self.bundle.task or "default": self.probabilities(texts)}
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="np")
        feed = {k: np.asarray(enc[k], dtype=np.int64) for k in self.input_names}
        names = [h["output"] for h in self.tasks.values()]
        outs = self.session.run(names, feed)
        return {t: softmax(o.astype(np.float32)) for t, o in zip(self.tasks, outs)}

    def stacked(self, texts: list[str]) -> np.ndarray:
        """Every head's probabilities side by side (own task first): rows the micro-batcher can
        split per request; ``unstack`` cuts them back per task."""
        return np.concatenate(list(self.task_probabilities(texts).values()), axis=-1)

    def unstack(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        out, i = {}, 0
        for t, h in (self.tasks or {self.bundle.task or "default": {"labels": self.labels}}).items():
            n = len(h["labels"])
            out[t], i = rows[..., i:i + n], i + n
        return out

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Tokens per text after truncation (what a batch is padded to)."""
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        return [len(x) for x in ids]

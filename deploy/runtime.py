"""One way to run a bundle: its tokenizer and an ONNX Runtime session.

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

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Tokens per text after truncation (what a batch is padded to)."""
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        return [len(x) for x in ids]

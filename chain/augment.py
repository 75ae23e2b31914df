"""Teacher-labelled augmentation for a distilled recovery: more sentences on which the pruned
student learns to match its teacher, made from the task's own train split.

TinyBERT (Jiao et al., 2020) multiplies its distillation set about 20x by swapping words for
BERT masked-LM or GloVe neighbours. Neither is at hand for an arbitrary user model offline, so
each copy applies one label-agnostic edit to a train sentence: delete some words, replace some
with words drawn from the split's own word distribution, or keep a contiguous span. Whatever
the edit does to the meaning, the teacher labels the result (its logits, and their argmax as
the hard label), so a flipped sentence is still a correct example of what the teacher does.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from .errors import SpecError

EDITS = ("delete", "replace", "span")


@dataclass
class AugmentSettings:
    """``copies`` edited sentences per train sentence (the recovery's epochs then see
    1 + copies times the data, and take about that much longer)."""
    copies: int = 1
    p: float = 0.15  # fraction of a sentence's words deleted, or replaced
    span: float = 0.6  # the shortest span kept, as a fraction of the sentence's words
    edits: list[str] = field(default_factory=lambda: list(EDITS))  # drawn uniformly, one per copy
    seed: int = 0

    def __post_init__(self) -> None:
        c = self.copies
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise SpecError(f"finetune.distill.augment.copies must be a positive integer, got {c!r}")
        for name in ("p", "span"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v < 1:
                raise SpecError(f"finetune.distill.augment.{name} must be in (0, 1), got {v!r}")
        edits = [self.edits] if isinstance(self.edits, str) else self.edits
        if not isinstance(edits, (list, tuple)) or not edits or any(e not in EDITS for e in edits):
            raise SpecError(f"finetune.distill.augment.edits must be a list of {', '.join(EDITS)}, got {self.edits!r}")
        self.edits = list(edits)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise SpecError(f"finetune.distill.augment.seed must be an integer, got {self.seed!r}")


def _edit(words: list[str], edit: str, s: AugmentSettings, rng: random.Random, vocab: list[str]) -> list[str]:
    n = len(words)
    if edit == "span":
        longest = max(1, n - 1)  # a span drops at least one word where there are two
        length = rng.randint(min(longest, max(1, math.ceil(s.span * n))), longest)
        start = rng.randint(0, n - length)
        return words[start:start + length]
    k = max(1, round(s.p * n))
    picked = set(rng.sample(range(n), k))
    if edit == "delete":
        kept = [w for i, w in enumerate(words) if i not in picked]
        return kept or words[:1]
    return [rng.choice(vocab) if i in picked else w for i, w in enumerate(words)]


def augment(texts: list[str], settings: AugmentSettings) -> list[str]:
    """``settings.copies`` edited versions of every text, copy by copy, seeded. An edit that
    changes nothing (a one-word sentence cropped to itself) is followed by a replacement, which
    can still draw the word it replaces: a copy rarely repeats its source, but it may."""
    rng = random.Random(settings.seed)
    vocab = [w for t in texts for w in t.split()] or [""]  # with repeats: unigram sampling
    out = []
    for _ in range(settings.copies):
        for text in texts:
            words = text.split()
            if not words:
                out.append(text)
                continue
            new = _edit(words, rng.choice(settings.edits), settings, rng, vocab)
            if new == words:
                new = _edit(words, "replace", settings, rng, vocab)
            out.append(" ".join(new))
    return out

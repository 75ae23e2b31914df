"""Where a quantized graph disagrees with its parent: by how sure the parent was.

For each PARENT CANDIDATE pair of artifact directories (ONNX or OpenVINO, as bench writes
them), on the first ``--n`` dev sentences of a built-in task at batch 8: argmax agreement on
all of them and on those whose parent top-two softmax gap is at least 0.05 / 0.1 / 0.2, the
largest gap at which they disagree, and both models' accuracy on the whole dev split. It is
what set ``compress.openvino.DECIDED_GAP`` (docs/results/bench-search-sst5-2026-12-04-avx2.md).

    python benchmarks/agreement_by_gap.py sst5 RUN/artifacts/onnx-<key> RUN/artifacts/onnx-int8-<key>
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GAPS = (0.05, 0.1, 0.2)


def logits(path: Path, texts: list[str], threads: int) -> np.ndarray:
    from chain.artifact import Artifact
    from chain.model import load_tokenizer
    from chain.predict import encode_batches
    from chain.runtime import load_predictor

    art = Artifact.load(path)
    predict, tok = load_predictor(art, threads), load_tokenizer(art)
    return np.concatenate([predict(enc) for _, enc in encode_batches(tok, texts, 8, 128)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("task", help="built-in task (its dev split)")
    p.add_argument("pairs", nargs="+", help="PARENT CANDIDATE [PARENT CANDIDATE ...]")
    p.add_argument("--n", type=int, default=256, help="dev sentences compared (default 256)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    if len(a.pairs) % 2:
        p.error("give artifact directories in PARENT CANDIDATE pairs")
    from chain.task import builtin_task

    dev = builtin_task(a.task).load("dev")
    labels = np.array(dev.labels)
    print(f"| candidate | all | {' | '.join(f'gap >= {g}' for g in GAPS)} | largest gap flipped | dev acc parent -> candidate |")
    print("|---|---|" + "---|" * len(GAPS) + "---|---|")
    for parent, cand in zip(a.pairs[::2], a.pairs[1::2]):
        ref, got = (logits(Path(d), dev.texts, a.threads) for d in (parent, cand))
        prob = np.exp(ref - ref.max(-1, keepdims=True))
        prob = np.sort(prob / prob.sum(-1, keepdims=True), -1)
        gap = (prob[:, -1] - prob[:, -2])[:a.n]
        same = (ref.argmax(-1) == got.argmax(-1))[:a.n]
        cells = [f"{same[gap >= g].mean():.3f} (n={(gap >= g).sum()})" for g in GAPS]
        flipped = f"{gap[~same].max():.3f}" if (~same).any() else "—"
        acc = [float((x.argmax(-1) == labels).mean()) for x in (ref, got)]
        print(f"| {Path(cand).name} | {same.mean():.3f} | {' | '.join(cells)} | {flipped} | {acc[0]:.4f} -> {acc[1]:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

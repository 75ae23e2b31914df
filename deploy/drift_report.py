"""Drift PSI of a bundle on traffic that matches its dev-set reference and on traffic that
does not (SST-2 test sentences; TREC questions; only negative SST-2 sentences).

Each stream of ``--n`` texts goes through the bundle in batches of 32 and a fresh
``DriftMonitor`` with the server's defaults (window 500, threshold 0.2).

    python -m deploy.drift_report BUNDLE --output docs/results/loadtest-drift-2026-12-02.md
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def streams(n: int) -> dict[str, list[str]]:
    from chain.task import builtin_task

    sst2 = builtin_task("sst2").load("test")
    return {"SST-2 test sentences": sst2.texts[:n],
            "TREC test questions": builtin_task("trec").load("test").texts[:n],
            "negative SST-2 test sentences only": [t for t, y in zip(sst2.texts, sst2.labels) if y == 0][:n]}


def main(argv: list[str] | None = None) -> int:
    from .bundle import Bundle
    from .drift import DriftMonitor
    from .runtime import Classifier

    p = argparse.ArgumentParser(prog="python -m deploy.drift_report")
    p.add_argument("bundle")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--output", type=Path, required=True)
    a = p.parse_args(argv)
    b = Bundle.load(a.bundle)
    clf = Classifier(b, threads=2)
    ref = b.reference
    rows = []
    for name, texts in streams(a.n).items():
        mon = DriftMonitor(ref, window=500, threshold=0.2, alert_every_s=1e9)
        for i in range(0, len(texts), 32):
            probs = clf.probabilities(texts[i:i + 32])
            s = mon.observe(probs.argmax(-1), probs.max(-1))
        rows.append(f"| {name} | {s.samples} | {s.label_psi:.3f} | {s.confidence_psi:.3f} | {s.mean_confidence:.3f} | "
                    f"{'yes' if s.alert else 'no'} |")
    cmd = "python -m deploy.drift_report " + " ".join(sys.argv[1:] if argv is None else argv)
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text("\n".join([
        "# Drift gauge on matching and shifted traffic", "", f"Command: `{cmd}`", "",
        f"Bundle: {Path(a.bundle).name}; reference: {ref['task']} {ref['split']} split, {ref['examples']} texts, "
        f"mean confidence {ref['mean_confidence']:.3f}, label shares {ref['label_freq']}. Window 500, alert past PSI 0.2. "
        f"1-min load average {os.getloadavg()[0]:.2f}.", "",
        "| stream | window | label PSI | confidence PSI | mean confidence | alert |", "|---|---|---|---|---|---|",
        *rows, ""]))
    print(a.output.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

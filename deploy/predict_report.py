"""``predict`` on the SST-2 test split with and without length bucketing, in one run, and
its predictions against chainpress' offline evaluation of the artifact.

The offline evaluation is the chain's own (``chain.evaluate``: batches of 64 sorted by
length, the artifact's ONNX graph). Rounds alternate bucketed / file-order so a change
in the machine's load hits both modes alike; texts/s counts the model loop only (batch
tokenization included, file reading and model loading not).

    python -m deploy.predict_report BUNDLE ARTIFACT --output docs/results/predict-2026-12-02.md
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np


def offline_labels(artifact_dir: str, texts: list[str], threads: int) -> list[int]:
    from transformers import AutoTokenizer

    from chain.predict import encode_batches
    from chain.runtime import load_predictor
    from chain.artifact import Artifact

    art = Artifact.load(artifact_dir)
    pred = load_predictor(art, threads)
    out = [0] * len(texts)
    for idx, enc in encode_batches(AutoTokenizer.from_pretrained(artifact_dir), texts, 64, 128, sort_by_length=True):
        for i, p in zip(idx, pred(enc).argmax(-1)):
            out[i] = int(p)
    return out


def run(bundle: str, artifact: str, rounds: int, batch_size: int, threads: int) -> dict:
    from chain.task import builtin_task

    from .bundle import Bundle
    from .predict import PredictConfig, predict

    task = builtin_task("sst2")
    split = task.load("test")
    labels = Bundle.load(bundle).labels
    ref = offline_labels(artifact, split.texts, threads)
    runs = []
    with tempfile.TemporaryDirectory() as d:
        for r in range(rounds):
            for bucketing in (True, False):
                out = Path(d) / f"out-{r}-{bucketing}.jsonl"
                res = predict(PredictConfig(bundle, task.files["test"], str(out), batch_size=batch_size,
                                            bucketing=bucketing, threads=threads, progress=False))
                got = [labels.index(json.loads(x)["pred_label"]) for x in out.read_text().splitlines()]
                res["agree_offline"] = float(np.mean([a == b for a, b in zip(got, ref)]))
                res["accuracy"] = float(np.mean([a == b for a, b in zip(got, split.labels)]))
                res["round"] = r
                runs.append(res)
                print(json.dumps({k: res[k] for k in ("round", "bucketing", "texts_per_s", "agree_offline")}),
                      flush=True)
    return {"offline_accuracy": float(np.mean([a == b for a, b in zip(ref, split.labels)])), "runs": runs,
            "rows": len(split)}


def render(res: dict, cmd: str, env: dict) -> str:
    lines = ["# `predict` on the SST-2 test split: length bucketing vs file order", "", f"Command: `{cmd}`", "",
             f"Machine: {env['cpu']}, {env['cores']} vCPUs, {env['threads']} threads; 1-min load average "
             f"before {env['load_before']}, after {env['load_after']} (other jobs were running). {env['date']}.", "",
             f"Bundle: {env['bundle']}; {res['rows']} sentences. Offline evaluation (chainpress' evaluator, "
             f"batches of 64 sorted by length): accuracy {res['offline_accuracy']:.4f}.", "",
             "| round | bucketing | texts/s (model loop) | padded tokens | real tokens | padding overhead | "
             "agreement with offline | accuracy |", "|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(f"| {r['round']} | {'yes' if r['bucketing'] else 'no'} | {r['texts_per_s']} | "
                     f"{r['padded_tokens']} | {r['tokens']} | {r['padded_tokens'] / r['tokens'] - 1:.0%} | "
                     f"{r['agree_offline']:.4f} | {r['accuracy']:.4f} |")
    b = [r["texts_per_s"] for r in res["runs"] if r["bucketing"]]
    f = [r["texts_per_s"] for r in res["runs"] if not r["bucketing"]]
    lines += ["", f"Mean texts/s: bucketed {np.mean(b):.1f}, file order {np.mean(f):.1f} "
              f"({np.mean(b) / np.mean(f):.2f}x).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.predict_report")
    p.add_argument("bundle")
    p.add_argument("artifact", help="the artifact the bundle was exported from (for the offline evaluation)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", type=Path, required=True)
    a = p.parse_args(argv)
    before = os.getloadavg()[0]
    res = run(a.bundle, a.artifact, a.rounds, a.batch_size, a.threads)
    from chain.environment import environment

    e = environment(a.threads)
    env = {"cpu": e.get("cpu"), "cores": e.get("cores"), "threads": a.threads, "date": f"{e.get('date')} {e.get('time')}",
           "load_before": round(before, 2), "load_after": round(os.getloadavg()[0], 2), "bundle": Path(a.bundle).name}
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(render(res, "python -m deploy.predict_report " + " ".join(sys.argv[1:] if argv is None else argv), env))
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

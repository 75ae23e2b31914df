"""The report of ``examples/ensemble_study.py``: accuracy over repeats, paired intervals, latency, size.

Reads ``runs/ensemble_sst2/r<i>/results.json`` (the chain rows), evaluates each member on
SST-2 test (the members are not chain rows), times batch-1 latency of repeat 0's
artifacts interleaved with bench's timing primitive, and writes
``docs/results/ensembles-<date>.{md,json}``.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RUNS = REPO / "runs" / "ensemble_sst2"
MAX_LENGTH = 64  # the spec's eval.max_length
LATENCY_CALLS = 100
DOC = REPO / "docs" / "ensembles.md"
BEGIN, END = "<!-- ensemble-study:begin (written by examples/ensemble_report.py) -->", "<!-- ensemble-study:end -->"

class StudyError(Exception):
    """Bad input to the report (a repeat not trained): one line, exit 2."""


# (key, label, chain stage or None, models run per input)
ROWS = [
    ("mean_member", "single member (mean of 3)", None, "1"),
    ("best_member_dev", "best single member (picked on dev)", None, "1"),
    ("best_member_oracle", "best single member (picked on test: oracle)", None, "1"),
    ("ensemble", "logit ensemble, uniform (chain row `ens`)", "ens", "3"),
    ("ensemble_dev", "logit ensemble, dev-tuned weights (from member logits)", None, "3"),
    ("uniform_soup", "uniform soup", "uniform-soup", "1"),
    ("greedy_soup", "greedy soup", "greedy-soup", "1"),
    ("student", "student distilled from the ensemble", "student", "1"),
    ("student_pruned", "student pruned (heads 0.5, FFN 0.6), before recovery", "student-pruned", "1 (pruned)"),
    ("student_recovered", "student pruned + recovered", "student-recovered", "1 (pruned)"),
    ("student_onnx", "student pruned + recovered, ONNX fp32", "student-onnx", "1 (pruned)"),
    ("student_int8", "student pruned + recovered, ONNX int8 (compressed)", "student-int8", "1 (pruned, int8)"),
    ("knn_soup", "greedy soup + kNN memory (k, lambda from dev)", "knn-soup", "1 + top-k over memory"),
]
# paired comparisons: (a, b, what it answers)
PAIRS = [
    ("greedy_soup", "best_member_dev", "greedy soup vs the best member (picked on dev)"),
    ("student", "best_member_dev", "distilled student vs the best member (picked on dev)"),
    ("greedy_soup", "best_member_oracle", "greedy soup vs the best member (oracle)"),
    ("student", "best_member_oracle", "distilled student vs the best member (oracle)"),
    ("uniform_soup", "best_member_dev", "uniform soup vs the best member (picked on dev)"),
    ("ensemble", "best_member_dev", "logit ensemble vs the best member (picked on dev)"),
    ("ensemble_dev", "ensemble", "dev-tuned weights vs uniform logit averaging"),
    ("student", "ensemble", "student vs its teacher"),
    ("student_int8", "student", "compressed student (pruned + int8) vs the student"),
    ("student_recovered", "student", "pruned + recovered (fp32) vs the student"),
    ("knn_soup", "greedy_soup", "kNN interpolation vs the greedy soup alone"),
]


def t_interval(d: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% t-interval of the mean of paired differences."""
    from scipy import stats

    d = np.asarray(d, dtype=float)
    m = float(d.mean())
    if len(d) < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return m, m - half, m + half


def member_test_logits(member_dir: Path, texts: list[str]) -> np.ndarray:
    """Cached beside the member (outside its sealed files: ``<dir>.test_logits.npy``)."""
    from chain.artifact import Artifact
    from chain.ensemble_members import logits_on
    from chain.model import load_model, load_tokenizer

    cache = member_dir.parent / f"{member_dir.name}.test_logits.npy"
    if cache.is_file():
        return np.load(cache)
    art = Artifact.load(member_dir)
    out = logits_on(load_model(art), load_tokenizer(art), texts, MAX_LENGTH)
    np.save(cache, out)
    return out


def one_repeat(i: int, test, dev, runs: Path = RUNS) -> dict:
    from chain.artifact import Artifact
    from chain.ensemble import combine, tune_weights
    from chain.jsonio import read_json

    res = read_json(runs / f"r{i}" / "results.json")
    if not isinstance(res, dict):
        raise StudyError(f"{runs / f'r{i}' / 'results.json'} is missing; run `ensemble_study.py train` first")
    rows = {r["name"]: r for r in res["stages"]}
    bad = {n: r["status"] for n, r in rows.items() if r["status"] not in ("ok", "cached")}
    if bad:
        raise StudyError(f"repeat {i} has stages that did not finish: {bad}; re-run `train`")
    ens = Artifact.load(rows["ens"]["artifact"])
    members = ens.manifest["train"]["members"]
    y, ydev = np.asarray(test.labels), np.asarray(dev.labels)
    logits = [member_test_logits(Path(m["dir"]), test.texts) for m in members]
    dev_logits = [np.load(Path(m["dir"]) / "dev_logits.npy") for m in members]
    acc = [float((x.argmax(-1) == y).mean()) for x in logits]
    dev_acc = [float((x.argmax(-1) == ydev).mean()) for x in dev_logits]
    w, w_dev_acc = tune_weights(dev_logits, dev.labels, 0.1)
    out = {"repeat": i, "member_seeds": [m["seed"] for m in members], "member_test": acc, "member_dev": dev_acc,
           "mean_member": float(np.mean(acc)), "best_member_dev": acc[int(np.argmax(dev_acc))],
           "best_member_oracle": max(acc),
           "ensemble_from_member_logits": float((combine(logits, (1 / 3,) * 3).argmax(-1) == y).mean()),
           "ensemble_dev": float((combine(logits, w).argmax(-1) == y).mean()), "ensemble_dev_weights": list(w),
           "ensemble_dev_dev_accuracy": w_dev_acc, "artifacts": {}}
    for key, _, stage, _ in ROWS:
        if stage is not None:
            out[key] = rows[stage]["accuracy"]
            out["artifacts"][key] = rows[stage]["artifact"]
    out["artifacts"]["member"] = members[0]["dir"]
    soup = Artifact.load(rows["greedy-soup"]["artifact"]).manifest["soup"]
    out["greedy_ingredients"] = soup["ingredients"]
    out["greedy_dev"], out["uniform_soup_dev"] = soup["dev_accuracy"], \
        Artifact.load(rows["uniform-soup"]["artifact"]).manifest["soup"]["dev_accuracy"]
    out["student_dev"] = rows["student"]["train"]["dev_accuracy"]
    knn = Artifact.load(rows["knn-soup"]["artifact"]).manifest["knn"]
    out["knn"] = {k: knn[k] for k in ("k", "lambda", "dev_accuracy", "dev_accuracy_lowest_lambda",
                                      "memory_entries", "dim", "dtype", "memory_mb", "build_s")}
    out["wall_time_s"] = {n: r["wall_time_s"] for n, r in rows.items()}
    return out


def latency(artifacts: dict[str, str], texts: list[str]) -> dict[str, dict]:
    """Batch-1 latency of each artifact on the same real sentences, interleaved (1 thread)."""
    from bench.timing import time_interleaved
    from chain.artifact import Artifact
    from chain.model import load_tokenizer
    from chain.predict import encode_batches
    from chain.runtime import load_predictor

    sample = random.Random(0).sample(texts, LATENCY_CALLS)
    arts = {k: Artifact.load(p) for k, p in artifacts.items()}
    encs = [e for _, e in encode_batches(load_tokenizer(arts["member"]), sample, 1, MAX_LENGTH)]
    preds = {k: load_predictor(a, threads=1) for k, a in arts.items()}
    timing = time_interleaved({k: (lambda i, p=p: p(encs[i])) for k, p in preds.items()}, n_calls=len(encs))
    return {k: {"p50_ms": round(s.p50_ms, 2), "p90_ms": round(s.p90_ms, 2),
                "p50_ci95_ms": [round(x, 2) for x in s.p50_ci95_ms], "size_mb": round(arts[k].size_mb(), 1)}
            for k, s in timing.stats.items()}


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def markdown(data: dict) -> str:
    reps, env, lat = data["repeats"], data["environment"], data["latency"]
    n = len(reps)
    lines = [f"# Ensembles, soups, a distilled student and kNN on SST-2 ({env['date']})", "",
             "Command: `python examples/ensemble_study.py train --repeats 3 && python examples/ensemble_study.py "
             "report --repeats 3` (spec `examples/ensemble_sst2.yaml`, stage `ens-dev` left out: its accuracy is "
             "computed from the members' test logits).", "",
             f"Machine: {env['cpu']}, {env['cores']} vCPUs, torch {env['versions'].get('torch')}, 1 thread. "
             f"Load average at report time {env['loadavg_1m']} (four other agents' jobs were running on the same "
             "2 vCPUs throughout): latencies are interleaved, so ratios between rows are fair, absolute ms are not "
             "a quiet machine's. Accuracies are deterministic (seeded).", "",
             f"Budget per model: 1 epoch over a seeded 1000-sentence subsample of SST-2 train (each member its own "
             f"subsample), batch 16, max_length 64, frozen embeddings, lr 1e-4. Repeat i: member seeds 10i+1..10i+3, "
             f"student seed 100+i. Test: SST-2 test, {data['test_examples']} sentences. Dev (selection, weights, "
             f"greedy soup, k and lambda): SST-2 dev, {data['dev_examples']} sentences.", "",
             "## Accuracy (SST-2 test, %), latency and size", "",
             "| row | " + " | ".join(f"r{r['repeat']}" for r in reps) + " | mean | b1 p50 ms (r0) | size MB (r0) | "
             "models per input |",
             "|---|" + "---|" * n + "---|---|---|---|"]
    lat_key = {"mean_member": "member", "best_member_dev": "member", "best_member_oracle": "member",
               "ensemble_dev": "ensemble"}
    for key, label, _, models in ROWS:
        vals = [r.get(key) for r in reps]
        lk = lat_key.get(key, key)
        lt = lat.get(lk, {})
        lines.append(f"| {label} | " + " | ".join(_pct(v) for v in vals)
                     + f" | {_pct(float(np.mean(vals)))} | {lt.get('p50_ms', 'n/a')} | {lt.get('size_mb', 'n/a')} | "
                       f"{models} |")
    lines += ["", f"## Paired differences over repeats (points, 95% t-interval, n = {n})", "",
              "| comparison | per repeat | mean | 95% interval | beats noise? |", "|---|---|---|---|---|"]
    for c in data["comparisons"]:
        lo, hi = c["ci95"]
        verdict = "yes, better" if lo > 0 else ("yes, worse" if hi < 0 else "no (interval contains 0)")
        lines.append(f"| {c['what']} | " + ", ".join(f"{d:+.2f}" for d in c["per_repeat"])
                     + f" | {c['mean']:+.2f} | [{lo:+.2f}, {hi:+.2f}] | {verdict} |")
    g = data["goals"]
    lines += ["", "## Goals", "",
              f"- Best single-cost row vs the best single member (picked on dev): {g['single_cost']}",
              f"- Compressed student within 0.5 point of the uncompressed student: {g['compressed']}", "",
              "## Notes", "",
              "- Intervals: mean of the paired per-repeat differences ± t(0.975, n-1)·sd/sqrt(n); with n = 3, "
              "t = 4.30, so only a difference that is large *and* consistent across repeats excludes 0. Eleven "
              "comparisons are listed: read one that barely excludes 0 with that in mind.",
              "- The best member is picked on dev (what a user can do); the oracle row picks it on test and is an "
              "upper bound no deployed choice reaches.",
              "- `student pruned + recovered` trains a second epoch (distilled from the student, same 1000 "
              "sentences) after pruning: the compressed-student comparison mixes the compression loss with that "
              "extra training, as `examples/compress_chain.yaml`'s recipe does.",
              "- kNN: the memory holds 1000 training sentences (the budget a member saw) as 384-d float16 "
              "vectors; its per-input cost is the latency difference to the greedy soup row (one (1, 384) x "
              "(384, 1000) product and a top-k), its size the memory's MB. Test-time fine-tuning on neighbours was "
              "not run.",
              "- Latency: batch 1, 1 thread, %d real SST-2 test sentences, every row interleaved in one process "
              "(bench.timing.time_interleaved), repeat 0's artifacts; the dev-weighted ensemble costs what the "
              "uniform one does (same K members)." % data["latency_calls"], "",
              "## Details per repeat", ""]
    for r in reps:
        k = r["knn"]
        lines.append(f"- r{r['repeat']}: members (seeds {r['member_seeds']}) test "
                     + ", ".join(_pct(a) for a in r["member_test"]) + "; dev "
                     + ", ".join(_pct(a) for a in r["member_dev"])
                     + f"; greedy soup took members {r['greedy_ingredients']} (dev {_pct(r['greedy_dev'])}, uniform "
                       f"soup dev {_pct(r['uniform_soup_dev'])}); dev-tuned weights {r['ensemble_dev_weights']}; "
                       f"kNN k={k['k']} lambda={k['lambda']} (dev {_pct(k['dev_accuracy'])} vs "
                       f"{_pct(k['dev_accuracy_lowest_lambda'])} without), memory {k['memory_entries']} x {k['dim']} "
                       f"{k['dtype']} = {k['memory_mb']} MB; `ens` row {_pct(r['ensemble'])} = from member logits "
                       f"{_pct(r['ensemble_from_member_logits'])}")
    return "\n".join(lines) + "\n"


def _goals(comp: dict) -> dict:
    best = max(("greedy_soup", "student"), key=lambda k: comp[(k, "best_member_dev")]["mean"])
    c = comp[(best, "best_member_dev")]
    lo, hi = c["ci95"]
    ok = c["mean"] >= 0.5 and lo > 0
    single = (f"{best.replace('_', ' ')} {c['mean']:+.2f} points [{lo:+.2f}, {hi:+.2f}]: "
              + ("met (>= 0.5 and the interval excludes 0)" if ok else "NOT met"
                 + (" (the interval contains 0)" if lo <= 0 else " (gain below 0.5)")))
    q = comp[("student_int8", "student")]
    qlo, qhi = q["ci95"]
    within = all(abs(d) <= 0.5 for d in q["per_repeat"]) and qlo >= -0.5
    compressed = (f"{q['mean']:+.2f} points [{qlo:+.2f}, {qhi:+.2f}], per repeat "
                  + ", ".join(f"{d:+.2f}" for d in q["per_repeat"])
                  + (": met" if within else ": NOT met"))
    return {"single_cost": single, "compressed": compressed, "single_cost_row": best, "single_cost_met": ok,
            "compressed_met": within}


def report(repeats: int, runs: Path = RUNS, results: Path | None = None) -> int:
    from chain.environment import environment
    from chain.jsonio import write_json_atomic
    from chain.task import builtin_task

    task = builtin_task("sst2")
    test, dev = task.load("test"), task.load("dev")
    reps = [one_repeat(i, test, dev, runs) for i in range(repeats)]
    comparisons, comp = [], {}
    for a, b, what in PAIRS:
        d = [100 * (r[a] - r[b]) for r in reps]
        m, lo, hi = t_interval(d)
        c = {"a": a, "b": b, "what": what, "per_repeat": [round(x, 2) for x in d], "mean": round(m, 2),
             "ci95": [round(lo, 2), round(hi, 2)]}
        comparisons.append(c)
        comp[(a, b)] = c
    lat = latency(reps[0]["artifacts"], test.texts)
    data = {"environment": environment(threads=1), "test_examples": len(test), "dev_examples": len(dev),
            "repeats": reps, "comparisons": comparisons, "latency": lat, "goals": _goals(comp),
            "latency_calls": LATENCY_CALLS}
    stem = results or REPO / "docs" / "results" / f"ensembles-{time.strftime('%Y-%m-%d')}"
    write_json_atomic(stem.with_suffix(".json"), data)
    md = markdown(data)
    stem.with_suffix(".md").write_text(md)
    if results is not None:
        print(md)
        return 0
    doc = DOC.read_text()
    body = md.split("\n", 2)[2].replace("\n## ", "\n### ")  # below the title, one heading level down
    body = f"From `docs/results/{stem.name}.md` (raw numbers: `{stem.name}.json`).\n\n" + body
    head, rest = doc.split(BEGIN, 1)
    DOC.write_text(head + BEGIN + "\n" + body + END + rest.split(END, 1)[1])
    print(md)
    return 0

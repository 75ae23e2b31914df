"""``results.json`` and ``report.md`` of a chain run: stages, forgetting matrix, baseline.

The forgetting matrix has one row per stage and one column per task: the accuracy of
the stage's model (the candidate, for a rolled-back stage) on each task's test split,
with each earlier task's own head. Empty cells: the task comes later in the chain, or
the artifact cannot carry that task's head (ONNX).
"""
from __future__ import annotations

from pathlib import Path

from .environment import environment
from .jsonio import write_json_atomic, write_text_atomic


def forgetting_matrix(results: dict) -> dict:
    cols = results["tasks"]
    rows = [s for s in results["stages"] if s.get("accuracy_by_task")]
    return {"rows": [s["name"] for s in rows], "cols": cols, "status": [s["status"] for s in rows],
            "values": [[s["accuracy_by_task"].get(t) for t in cols] for s in rows]}


def forgetting_summary(results: dict) -> list[dict]:
    """Per task: accuracy right after the stage that last trained it, and in the final model."""
    final = (results.get("final") or {}).get("accuracy") or {}
    out = []
    for t in results["tasks"]:
        trained = next((s for s in reversed(results["stages"]) if s.get("task") == t and s.get("train")
                        and s["status"] in ("ok", "cached")), None)  # the last time it was trained
        after = trained["accuracy_by_task"].get(t) if trained else None
        fin = final.get(t)
        out.append({"task": t, "trained_at": trained["name"] if trained else None, "after_training": after,
                    "final": fin, "change_points": None if after is None or fin is None else round(100 * (fin - after), 2)})
    return out


def _f(v, spec: str = ".4f") -> str:
    return "—" if v is None else format(v, spec)


def markdown(results: dict) -> str:
    env = results.get("environment", {})
    md = [f"# chainpress chain: {results['name']}", "",
          f"Spec `{results.get('spec')}`; model `{results['model']}`; output `{results['output']}`.  ",
          f"Machine: {env.get('cpu')} ({env.get('cores')} cores, {env.get('threads')} threads; "
          f"{', '.join(env.get('cpu_flags') or []) or 'no AVX-512/AMX'}); "
          f"torch {env.get('versions', {}).get('torch')}, transformers {env.get('versions', {}).get('transformers')}; "
          f"date {env.get('date')}; wall time {results.get('wall_time_s', '—')} s (this invocation; cached stages "
          "cost nothing).", "",
          "## Stages", "", "| stage | type | task | status | attempts | stage wall s | reason |", "|---|---|---|---|---|---|---|"]
    for s in results["stages"]:
        md.append(f"| {s['name']} | {s['type']} | {s.get('task') or '—'} | {s['status']} | "
                  f"{len(s.get('attempts', []))} | {'cached' if s.get('cached') else _f(s.get('wall_time_s'), '.1f')} | {s.get('reason') or ''} |")
    fm = results["forgetting_matrix"]
    md += ["", f"## Accuracy on every task after every stage ({results['eval']['split']} split)", "",
           "Rows: stages (a rolled-back row shows the rejected candidate); columns: tasks, each evaluated "
           "with its own head on the stage's encoder.", "",
           "| stage | status | " + " | ".join(fm["cols"]) + " |", "|---|---|" + "---|" * len(fm["cols"])]
    for name, status, vals in zip(fm["rows"], fm["status"], fm["values"]):
        md.append(f"| {name} | {status} | " + " | ".join(_f(v) for v in vals) + " |")
    final = results.get("final") or {}
    md.append(f"| **final** ({final.get('stage')}) | | "
              + " | ".join(_f((final.get("accuracy") or {}).get(t)) for t in fm["cols"]) + " |")
    md += ["", "## Forgetting", "", "| task | trained at | accuracy then | final accuracy | change (points) |",
           "|---|---|---|---|---|"]
    for f in results.get("forgetting", []):
        md.append(f"| {f['task']} | {f['trained_at'] or '—'} | {_f(f['after_training'])} | {_f(f['final'])} | "
                  f"{_f(f['change_points'], '+.2f')} |")
    md += overlap_section(results.get("overlap") or [])
    b = results.get("baseline")
    if b:
        replayed = b.get("replayed") or [b["chain_stage"]]
        md += ["", "## Chain vs direct fine-tuning", "",
               f"The direct model trains {b['task']} straight from the base model with the chain's own stages "
               f"on {b['task']} (same configs, epochs and data budget): "
               + " -> ".join(f"`baseline-{n}`" for n in replayed) + ".", "",
               "| model | accuracy on " + str(b["task"]) + " |", "|---|---|",
               f"| chain ({b['chain_stage']}) | {_f(b['chain_accuracy'])} |",
               f"| direct ({b['stage']}, {b['status']}) | {_f(b['accuracy'])} |",
               f"| chain − direct | {_f(b['gain_points'], '+.2f')} points |"]
    md.append("")
    return "\n".join(md)


def overlap_section(rows: list[dict]) -> list[str]:
    """Markdown lines for ``chain.overlap.train_eval_overlap`` rows (none when there is no overlap)."""
    if not rows:
        return []
    md = ["", "## Train/test text overlap", "",
          "Sentences of a task's evaluation split that a fine-tune stage trained on (exact match after case "
          "and whitespace normalisation; with that stage's labels, which may be another task's). "
          "Scores on these tasks are not fully held out; `decontaminate: true` in the spec removes them.", "",
          "| stage | trained on | evaluated task | shared sentences | of unique eval sentences |", "|---|---|---|---|---|"]
    return md + [f"| {o['stage']} | {o['train_task']} | {o['eval_task']} ({o['split']}) | {o['shared']} | "
                 f"{o['eval_size']} ({100 * o['fraction']:.1f}%) |" for o in rows]


def write_results(results: dict, out_dir: Path) -> None:
    results.setdefault("environment", environment())
    results["forgetting_matrix"] = forgetting_matrix(results)
    results["forgetting"] = forgetting_summary(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "results.json", results)
    write_text_atomic(out_dir / "report.md", markdown(results))

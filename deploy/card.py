"""The model card: what made a bundle, read from the artifact's manifests.

An artifact's manifest names its parent (an absolute path on the machine that ran the
chain); we walk that chain while the directories exist and keep only what a reader of
the card needs -- stage names, types, measured metrics -- never a path. Latency and the
machine come from the bench's ``results.json`` next to the artifacts when there is one.
"""
from __future__ import annotations

import json
from pathlib import Path

from chain.artifact import MANIFEST, Artifact


def lineage(art: Artifact, limit: int = 32) -> list[dict]:
    """Stages from the source model to ``art`` (oldest first), metrics included."""
    out, seen, cur = [], set(), art
    while cur is not None and len(out) < limit:
        m = cur.manifest
        out.append({"stage": m.get("stage", cur.path.name), "type": m.get("stage_type"),
                    "format": m.get("format", "hf"), "metrics": measured(m),
                    "task": (m.get("task") or {}).get("name")})
        parent = m.get("parent")
        seen.add(cur.path.resolve())
        if not parent or not (Path(parent) / MANIFEST).is_file() or Path(parent).resolve() in seen:
            if parent and not (Path(parent) / MANIFEST).is_file():
                note = "source model" if Path(parent).is_dir() else "not on this machine"
                out.append({"stage": m.get("parent_stage") or Path(parent).name, "type": None,
                            "format": None, "metrics": {}, "task": None, "note": note})
            break
        cur = Artifact(Path(parent), json.loads((Path(parent) / MANIFEST).read_text()))
    return out[::-1]


def measured(manifest: dict) -> dict:
    """What the chain measured for an artifact: its own task's accuracy (the executor's
    ``evaluations``, on the reported split), or an older manifest's ``metrics``."""
    own = (manifest.get("task") or {}).get("name")
    ev = (manifest.get("evaluations") or {}).get(own) or {}
    if ev.get("accuracy") is not None:
        return {"accuracy": ev["accuracy"], "examples": ev.get("examples")}
    return _plain(manifest.get("metrics", {}))


def _plain(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}


def bench_row(art: Artifact) -> dict | None:
    """This stage's row of ``results.json`` (latency, throughput, machine), if the bench made it."""
    for cand in (art.path.parent.parent / "results.json", art.path.parent / "results.json"):
        if cand.is_file():
            try:
                res = json.loads(cand.read_text())
            except json.JSONDecodeError:
                return None
            rows = res.get("stages") or res.get("rows") or {}
            row = rows.get(art.name) if isinstance(rows, dict) else next(
                (r for r in rows if art.name in (r.get("name"), r.get("stage"))), None)
            if row:
                env = res.get("environment", {})
                return {"latency_ms": row.get("latency_ms"), "throughput": row.get("throughput"),
                        "machine": {k: env.get(k) for k in ("cpu", "threads", "date", "loadavg_1m") if k in env}}
    return None


def render(name: str, meta: dict) -> str:
    """README.md with Hugging Face front matter, so hubs and humans read the same file."""
    labels = meta["labels"]
    ov = meta["model"].endswith(".xml")
    lib = "openvino" if ov else "onnx"
    lines = ["---", "pipeline_tag: text-classification", f"library_name: {lib}",
             f"tags: [chainpress, {lib}, text-classification]", "---", "", f"# {name}", "",
             f"A {meta['num_labels']}-class text classifier exported by chainpress "
             f"(`{meta['target']}` target). Labels: " + ", ".join(f"{i} = {n}" for i, n in enumerate(labels)) + ".",
             f"Inputs: {', '.join(meta['inputs'])} (int64, batch x tokens, at most {meta['max_length']} tokens); "
             f"output: {', '.join(meta['outputs'])} (float32, batch x {meta['num_labels']}).", "",
             "## How it was made", "", "| stage | type | task | accuracy | size MB |", "|---|---|---|---|---|"]
    for s in meta["lineage"]:
        acc = s["metrics"].get("accuracy")
        size = s["metrics"].get("size_mb")
        lines.append(f"| {s['stage']} | {s.get('type') or s.get('note') or '—'} | {s.get('task') or '—'} | "
                     f"{f'{acc:.4f}' if isinstance(acc, float) else '—'} | {size if size is not None else '—'} |")
    b = meta.get("bench")
    lines.append("")
    if b:
        lat, thr, mach = b.get("latency_ms") or {}, b.get("throughput") or {}, b.get("machine") or {}
        lines.append(f"Measured by `python -m bench` on {mach.get('cpu', 'unknown CPU')}, {mach.get('threads')} "
                     f"threads, {mach.get('date')} (1-min load average {mach.get('loadavg_1m')}): batch-1 latency p50 {lat.get('p50')} ms, p99 {lat.get('p99')} "
                     f"ms; batch-32 throughput {thr.get('samples_per_s')} samples/s.")
    else:
        lines.append("Latency: not measured for this artifact (no bench results.json next to it).")
    ref = meta.get("reference")
    lines += ["", "## Drift reference", ""]
    lines.append(f"Label and confidence histograms of the {ref['task']} {ref['split']} split ({ref['examples']} "
                 f"texts) are in bundle.json; `python -m deploy serve` compares live traffic with them."
                 if ref else f"None stored ({meta.get('reference_note', 'no labelled split')}): drift is not monitored.")
    lines += ["", "## Load it", "", "```python",
              f"from optimum.{'intel' if ov else 'onnxruntime'} import {'OV' if ov else 'ORT'}ModelForSequenceClassification",
              "from transformers import AutoTokenizer, pipeline",
              f"model = {'OV' if ov else 'ORT'}ModelForSequenceClassification.from_pretrained(BUNDLE_DIR)",
              "clf = pipeline('text-classification', model=model, tokenizer=AutoTokenizer.from_pretrained(BUNDLE_DIR))",
              "clf('a gripping, funny film')", "```", "",
              "Check the files: `sha256sum -c checksums.sha256`. Serve it: `python -m deploy serve BUNDLE_DIR`.", ""]
    return "\n".join(lines)

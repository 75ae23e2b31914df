"""Results table (terminal + Markdown) and results.json."""
from __future__ import annotations

import json
from pathlib import Path

COLUMNS = ("stage", "backend", "status", "accuracy", "Δacc (pts)", "p50 ms", "p90 ms", "p99 ms",
           "b32 samples/s", "size MB", "speedup b32", "speedup p50")


def _fmt(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def rows(results: dict) -> list[list[str]]:
    out = []
    for s in results["stages"]:
        lat, thr, sp = s.get("latency_ms") or {}, s.get("throughput") or {}, s.get("speedup") or {}
        status = s["status"] if s["status"] == "ok" else f"{s['status']}: {s.get('reason', '')[:60]}"
        out.append([s["name"], s.get("backend") or "—", status, _fmt(s.get("accuracy"), ".4f"),
                    _fmt(s.get("accuracy_delta_points"), "+.2f"), _fmt(lat.get("p50"), ".2f"),
                    _fmt(lat.get("p90"), ".2f"), _fmt(lat.get("p99"), ".2f"),
                    _fmt(thr.get("samples_per_s"), ".1f"), _fmt(s.get("size_mb"), ".1f"),
                    _fmt(sp.get("throughput"), ".2f") + ("x" if sp.get("throughput") else ""),
                    _fmt(sp.get("latency_p50"), ".2f") + ("x" if sp.get("latency_p50") else "")])
    return out


def markdown_table(results: dict) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(results)]
    return "\n".join(lines)


def text_table(results: dict) -> str:
    table = [list(COLUMNS)] + rows(results)
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in table)


def write_reports(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "results.json.part"
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(out_dir / "results.json")
    env = results["environment"]
    md = [f"# chainpress bench: {results['task']}", "",
          f"Reference: `{results['reference']}` (speedups and Δacc are vs this stage). "
          f"Machine: {env.get('cpu')}, {env.get('threads')} threads, torch {env['versions'].get('torch')}, "
          f"onnxruntime {env['versions'].get('onnxruntime')}. Date: {env.get('date')}.", "",
          f"Latency: batch 1 over {results['measure'].get('latency_calls')} real test sentences; "
          "throughput: batch 32 over fixed real test batches, all stages timed interleaved in one process.",
          "", markdown_table(results), ""]
    (out_dir / "report.md").write_text("\n".join(md))

"""Results table (terminal + Markdown), results.json, and report.md with its PNG plots."""
from __future__ import annotations

from pathlib import Path

from chain.jsonio import write_json_atomic, write_text_atomic

COLUMNS = ("stage", "backend", "status", "accuracy", "Δacc (pts)", "p50 ms", "p90 ms", "p99 ms",
           "b32 samples/s", "size MB", "speedup b32", "speedup p50")


def _fmt(v, spec: str) -> str:
    return "—" if v is None or v != v else format(v, spec)  # v != v: NaN


def rows(results: dict) -> list[list[str]]:
    out = []
    for s in results["stages"]:
        lat, thr, sp = s.get("latency_ms") or {}, s.get("throughput") or {}, s.get("speedup") or {}
        status = s["status"] if s["status"] in ("ok", "cached") else f"{s['status']}: {(s.get('reason') or '')[:60]}"
        out.append([s["name"] + (" (peer)" if s.get("peer") else ""), s.get("backend") or "—", status, _fmt(s.get("accuracy"), ".4f"),
                    _fmt(s.get("accuracy_delta_points"), "+.2f"), _fmt(lat.get("p50"), ".2f"),
                    _fmt(lat.get("p90"), ".2f"), _fmt(lat.get("p99"), ".2f"),
                    _fmt(thr.get("samples_per_s"), ".1f"), _fmt(s.get("size_mb"), ".1f"),
                    _fmt(sp.get("throughput"), ".2f") + ("x" if sp.get("throughput") else ""),
                    _fmt(sp.get("latency_p50"), ".2f") + ("x" if sp.get("latency_p50") else "")
                    + _ci((s.get("speedup_ci95") or {}).get("latency_p50"))])
    return out


def _ci(ci) -> str:
    return f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and ci[0] != ci[1] else ""


def markdown_table(results: dict) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(results)]
    return "\n".join(lines)


def text_table(results: dict) -> str:
    table = [list(COLUMNS)] + rows(results)
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in table)


COST_COLUMNS = ("stage", "stage wall s", "load s", "load RSS MB", "peak RSS MB", "first call b1 ms",
                "first call b32 ms")


def costs_markdown(results: dict) -> list[str]:
    """What each row cost besides its steady-state speed: building the stage (training,
    export; ``cached`` when it was found in the cache), loading the model, its memory and
    the cold first calls. Peaks are per model only where each ran in a worker of its own."""
    isolated = results["measure"].get("isolation", "inprocess") == "process"
    lines = ["## Memory and time", "",
             "Stage wall s: building the stage in this run. Load s and load RSS: the model's load in its "
             "timing worker, its runtime library already imported; peak RSS: the worker's own peak "
             "(VmHWM) after every timed call; first call: the cold first call of each batch size."
             if isolated else
             "All rows were timed in one process: its peak RSS is shared by every model, so no per-model "
             "memory or load figure is given (run with `--isolation process` for them).", "",
             "| " + " | ".join(COST_COLUMNS) + " |", "|" + "---|" * len(COST_COLUMNS)]
    for s in results["stages"]:
        mem, timing = s.get("memory_mb") or {}, s.get("timing") or {}
        wall = "cached" if s.get("cached") else _fmt(s.get("wall_time_s"), ".1f")
        lines.append("| " + " | ".join([s["name"], wall, _fmt(s.get("load_s"), ".2f"), _fmt(mem.get("load_rss"), ".0f"),
                                        _fmt(mem.get("peak_rss"), ".0f"), _fmt(s.get("first_call_ms"), ".1f"),
                                        _fmt(timing.get("first_call_ms_batch32"), ".1f")]) + " |")
    return lines + [""]


def write_reports(results: dict, out_dir: Path, plots: bool = True) -> None:
    """results.json, report.md and (``plots``) the PNGs it links, all in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "results.json", results)
    env = results["environment"]
    md = [f"# chainpress bench: {results['task']}", "",
          f"Reference: `{results['reference']}` (speedups and Δacc are vs this stage). "
          f"Machine: {env.get('cpu')}, {env.get('threads')} threads, torch {env['versions'].get('torch')}, "
          f"onnxruntime {env['versions'].get('onnxruntime')}, openvino {env['versions'].get('openvino')}. "
          f"CPU flags: {', '.join(env.get('cpu_flags') or []) or 'unknown'}; load average (1 min) at the start: "
          f"{env.get('loadavg_1m')}. Date: {env.get('date')}.", "",
          f"Latency: batch 1 over {results['measure'].get('latency_calls')} real test sentences; "
          "throughput: batch 32 over fixed real test batches; "
          + ("each stage timed in a worker process of its own, the workers driven in rotation on the same inputs "
             "(ONNX Runtime's threads spin during a call, as by default in a process of its own, and stop when it returns)."
             if results["measure"].get("isolation", "inprocess") == "process"  # absent: results from before workers
             else "all stages timed interleaved in one process (ONNX Runtime's threads do not spin: they would "
                  "slow the other models)."),
          "Speedup p50 brackets: paired-bootstrap 95% interval over the interleaved rounds. "
          "`python -m bench compare` gates the trimmed-mean and throughput speedups (in results.json) with "
          "their intervals plus a run-to-run noise floor (docs/gating.md). "
          "Rows marked (peer) are what a user gets without chainpress; they are not gated.",
          ""]
    md += [f"**Warning:** {w}." for w in results.get("warnings") or []] + ([""] if results.get("warnings") else [])
    md += [markdown_table(results), ""]
    if results.get("best"):
        from .best import markdown as best_markdown

        md += best_markdown(results["best"])
    if (results.get("compute") or {}).get("achieved_gops"):
        from .flops import markdown as compute_markdown

        md += compute_markdown(results["compute"])
    md += costs_markdown(results)
    if results.get("search"):
        from .search import markdown as search_markdown

        md += search_markdown(results["search"])
    notes = [f"- `{s['name']}` {s['status']}: {s['reason']}" for s in results["stages"] if s.get("reason")]
    notes += [f"- `{s['name']}` saves no time over `{results['reference']}` on {s.get('backend')} here "
              f"(95% intervals of its speedups: {s['speedup_ci95']})" + (f"; {s['extra']['why']}" if (s.get("extra") or {}).get("why") else "")
              for s in results["stages"] if s.get("speedup_is_real") is False]
    if notes:
        md += ["Not measured, or no faster:", ""] + notes + [""]
    if plots:
        from .plots import write_plots

        for name in write_plots(results, out_dir):
            md += [f"![{name[:-4].replace('_', ' ')}]({name})", ""]
    write_text_atomic(out_dir / "report.md", "\n".join(md))


def emit_markdown(md: str, path: Path | None) -> None:
    """Print a check's Markdown report and, if ``path`` is given, write it there too."""
    print("\n" + md)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(md + "\n")

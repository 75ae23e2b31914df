"""PNG figures for report.md: accuracy vs latency with the Pareto front, latency distributions.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend
switch), from results.json alone, so a report can be re-plotted without re-running.

>>> write_plots(json.loads(Path("bench-out/results.json").read_text()), Path("bench-out"))
['accuracy_latency.png', 'latency_distribution.png']
"""
from __future__ import annotations

from pathlib import Path

ACCURACY_LATENCY = "accuracy_latency.png"
LATENCY_DISTRIBUTION = "latency_distribution.png"


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of (name, latency, accuracy) points no other point beats on both (lower latency, higher accuracy)."""
    front, best = [], float("-inf")
    for name, _, acc in sorted(points, key=lambda p: (p[1], -p[2])):
        if acc > best:
            front.append(name)
            best = acc
    return front


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _subtitle(results: dict) -> str:
    env = results.get("environment", {})
    return f"{results.get('task')} | {env.get('cpu')} | {env.get('threads')} threads | {env.get('date')}"


def plot_accuracy_latency(results: dict, path: Path) -> bool:
    rows = [s for s in results["stages"] if s["status"] in ("ok", "cached") and s.get("accuracy") is not None
            and (s.get("latency_ms") or {}).get("p50")]
    if not rows:
        return False
    fig = _figure(8, 5)
    ax = fig.add_subplot()
    pts = [(s["name"], s["latency_ms"]["p50"], 100 * s["accuracy"]) for s in rows]
    front = pareto_front(pts)
    colors = [f"C{i % 10}" for i in range(len(rows))]
    for s, (name, lat, acc), color in zip(rows, pts, colors):
        lo, hi = s["latency_ms"].get("p50_ci95") or (lat, lat)
        peer = s.get("peer", False)
        # one colour and legend entry per stage: stages often share an accuracy, labels would collide
        ax.errorbar(lat, acc, xerr=[[max(lat - lo, 0)], [max(hi - lat, 0)]], fmt="^" if peer else "o", ms=9,
                    capsize=3, color=color, mec="black" if name in front else color, mew=1.8,
                    label=name + (" (peer)" if peer else "") + (", Pareto" if name in front else ""))
    fp = sorted((p for p in pts if p[0] in front), key=lambda p: p[1])
    ax.step([p[1] for p in fp], [p[2] for p in fp], where="post", color="black", lw=1, ls="--", alpha=0.6,
            label="Pareto front")
    ax.set_xlabel("latency p50, batch 1 (ms; bars: 95% CI of the median)")
    ax.set_ylabel("accuracy (%)")
    accs = [p[2] for p in pts]
    ax.set_ylim(min(accs) - max(1.0, 0.15 * (max(accs) - min(accs))), max(accs) + max(1.0, 0.15 * (max(accs) - min(accs))))
    ax.set_xlim(left=0)
    ax.set_title("Accuracy vs latency per stage (up and left is better)\n" + _subtitle(results), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    return True


def plot_latency_distribution(results: dict, path: Path) -> bool:
    rows = [s for s in results["stages"] if s["status"] in ("ok", "cached") and (s.get("samples_ms") or {}).get("latency")]
    if not rows:
        return False
    fig = _figure(7.5, 1.2 + 0.55 * len(rows))
    ax = fig.add_subplot()
    data = [s["samples_ms"]["latency"] for s in rows]
    ax.boxplot(data, vert=False, whis=(1, 99), showfliers=True, flierprops={"ms": 2, "alpha": 0.4})
    ax.set_yticks(range(1, len(rows) + 1), [s["name"] + (" (peer)" if s.get("peer") else "") for s in rows])
    ax.set_xscale("log")
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("latency per call, batch 1 (ms, log scale; box: quartiles, whiskers: p1-p99)")
    ax.set_title("Latency distribution per stage\n" + _subtitle(results), fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path)
    return True


def write_plots(results: dict, out_dir: Path) -> list[str]:
    """Write the PNGs that have data into ``out_dir``; return their file names."""
    written = []
    if plot_accuracy_latency(results, out_dir / ACCURACY_LATENCY):
        written.append(ACCURACY_LATENCY)
    if plot_latency_distribution(results, out_dir / LATENCY_DISTRIBUTION):
        written.append(LATENCY_DISTRIBUTION)
    return written

"""python -m bench compare (chainpress compare): the regression gate's command line.

Exit 0 = pass, 1 = a metric regressed beyond its threshold and outside the noise
interval, 2 = files that cannot be compared.
"""
from __future__ import annotations

import argparse
import sys

from chain.cli import add_common, guarded, quiet_libraries


def parse(argv, prog: str = "python -m bench compare") -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog,
                                description="Gate CURRENT against BASELINE: exit 1 only when a metric regresses "
                                            "beyond its threshold and outside the noise interval; 2 on bad input.")
    p.add_argument("baseline", nargs="+", help="results.json of the baseline run; several runs of the same code "
                                               "are merged into their median (steadier; 3-5 recommended)")
    p.add_argument("current", help="results.json of the run to gate")
    p.add_argument("--rerun", nargs="+", default=[], metavar="RESULTS", help="results of re-running the current "
                   "code: gated together with CURRENT (median). Confirms a failure on a noisy host")
    p.add_argument("--max-slowdown", default="10%", help="per stage, vs the reference (ratio mode) or in absolute "
                                                         "time (--absolute); default 10%%")
    p.add_argument("--max-accuracy-drop", type=float, default=0.5, help="accuracy points; default 0.5")
    p.add_argument("--noise-floor", default="5%", help="run-to-run noise one run cannot see (95%% half-width per "
                                                       "run); default 5%% (measured on a busy 2-core host); "
                                                       "lower it on a quiet dedicated machine")
    p.add_argument("--absolute", action="store_true", help="gate ms and samples/s, not speedups: only for a "
                                                           "baseline recorded on this machine")
    p.add_argument("--include-peers", action="store_true", help="also gate the peer rows (torch-compile, optimum)")
    add_common(p, output=True, output_help="also write the comparison there as compare.json")
    return p.parse_args(argv)


def main(argv=None, prog: str = "python -m bench compare") -> int:
    from .compare import Thresholds, parse_percent, run_compare

    a = parse(sys.argv[1:] if argv is None else argv, prog)
    quiet_libraries(a.verbose, a.quiet)

    def body() -> int:
        thresholds = Thresholds(parse_percent(a.max_slowdown), a.max_accuracy_drop, parse_percent(a.noise_floor))
        json_out = None
        if a.output is not None:
            a.output.mkdir(parents=True, exist_ok=True)
            json_out = a.output / "compare.json"
        return run_compare(a.baseline, a.current, thresholds, absolute=a.absolute, include_peers=a.include_peers,
                           json_out=json_out, reruns=a.rerun)

    return guarded(body)



"""The timing primitive: interleaving, paired ratios and their intervals, threads, environment."""
import numpy as np
import pytest
import torch

from chain.environment import environment
from bench.timing import Timing, fixed_threads, summarize, time_interleaved, trimmed_mean


def test_interleaved_rounds_warmup_and_shuffled_order():
    calls = []
    fns = {n: (lambda i, n=n: calls.append((n, i))) for n in "abc"}
    t = time_interleaved(fns, n_calls=20, warmup=3, shuffle_seed=1)
    assert calls[:9] == [(n, i) for n in "abc" for i in range(3)]  # warm-up first, per variant
    timed = calls[9:]
    rounds = [timed[3 * k:3 * k + 3] for k in range(20)]
    assert all(sorted(r) == [(n, k) for n in "abc"] for k, r in enumerate(rounds))  # round k: input k for all
    assert len({tuple(n for n, _ in r) for r in rounds}) > 1  # the order within a round changes
    assert all(len(t.samples_ms[n]) == 20 and t.stats[n].n == 20 for n in "abc")
    assert t.threads["torch_intra_op"] == torch.get_num_threads() and t.peak_rss_mb > 0


def test_blocks_of_calls_keep_round_inputs_paired():
    calls = []
    fns = {n: (lambda i, n=n: calls.append((n, i))) for n in "ab"}
    t = time_interleaved(fns, n_calls=7, warmup=0, block=3)
    turns = [calls[k:k + 3] for k in (0, 3, 6, 9)] + [calls[12:13], calls[13:14]]
    # each turn: one variant, consecutive inputs; both variants get inputs 0-2, then 3-5, then 6
    assert all(len({n for n, _ in turn}) == 1 for turn in turns)
    assert sorted(calls) == sorted((n, i) for n in "ab" for i in range(7))
    assert [i for n, i in calls if n == "a"] == list(range(7)) == [i for n, i in calls if n == "b"]
    assert {n for n, i in calls[:6]} == {"a", "b"} and all(len(t.samples_ms[n]) == 7 for n in "ab")


def test_turn_warmup_calls_start_each_turn_untimed(monkeypatch):
    """Each turn begins with untimed calls on its first input; the timed samples are unchanged."""
    import bench.timing as timing

    clock, calls = FakeClock(), []

    def fn(n, i):
        calls.append((n, i))
        clock.t += 1.0 if n == "a" else 2.0  # timed calls: a 1 s, b 2 s

    monkeypatch.setattr(timing, "clock_for", lambda device: lambda: (lambda t0=clock.t: 1000 * (clock.t - t0)))
    t = time_interleaved({n: (lambda i, n=n: fn(n, i)) for n in "ab"}, n_calls=4, warmup=0, block=2, turn_warmup=1)
    turns = [calls[k:k + 3] for k in range(0, 12, 3)]
    assert all(turn[0][1] == turn[1][1] and turn[1][1] + 1 == turn[2][1] for turn in turns)  # warm-up, then the block
    assert sorted(i for n, i in calls if n == "a") == [0, 0, 1, 2, 2, 3]
    assert t.samples_ms["a"].tolist() == [1000.0] * 4 and t.samples_ms["b"].tolist() == [2000.0] * 4


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_ratio_of_known_speeds(monkeypatch):
    """A clock the variants advance by known amounts: input i costs (1 + i % 5) ms, "slow" pays 2x."""
    clock = FakeClock()
    monkeypatch.setattr("bench.timing.time.perf_counter", clock)

    def cost(factor):
        def run(i):
            clock.t += factor * (1 + i % 5) / 1e3
        return run

    t = time_interleaved({"slow": cost(2.0), "fast": cost(1.0)}, n_calls=50, warmup=2)
    assert t.stats["fast"].p50_ms == pytest.approx(3.0) and t.stats["fast"].mean_ms == pytest.approx(3.0)
    for stat in ("median", "mean", "tmean"):
        r = t.ratio("slow", "fast", stat)
        assert r.value == pytest.approx(2.0) and r.ci95 == pytest.approx((2.0, 2.0)), stat  # paired: no spread


def test_real_clock_orders_real_work():
    work = lambda n: (lambda i: sum(range(n)))  # noqa: E731  CPU-bound: preemption stretches both alike
    t = time_interleaved({"slow": work(300_000), "fast": work(100_000)}, n_calls=40, warmup=2)
    assert t.ratio("slow", "fast", "tmean").value > 1.3


def test_paired_bootstrap_cancels_drift_shared_by_a_round():
    """Both variants see the same slow drift (x1 .. x3 over the run); B is exactly 20% faster.

    Resampling rounds keeps the pairs, so the interval stays tight around 1.25; an unpaired
    interval would be as wide as the drift.
    """
    rng = np.random.default_rng(0)
    drift = np.linspace(1, 3, 200)
    a = 10 * drift * rng.lognormal(0, 0.02, 200)
    b = 8 * drift * rng.lognormal(0, 0.02, 200)
    t = Timing({"a": a, "b": b}, {"a": summarize(a), "b": summarize(b)}, {}, 0.0)
    r = t.ratio("a", "b", "mean")
    assert r.ci95[0] < 1.25 < r.ci95[1] and r.ci95[1] - r.ci95[0] < 0.02
    unpaired = summarize(a).p50_ci95_ms[1] / summarize(b).p50_ci95_ms[0] - \
        summarize(a).p50_ci95_ms[0] / summarize(b).p50_ci95_ms[1]
    assert unpaired > 10 * (r.ci95[1] - r.ci95[0])


def test_trimmed_mean_ignores_a_stall():
    calls = np.full(150, 10.0)
    calls[7] = 500.0  # one stall of a shared host
    assert trimmed_mean(calls) == pytest.approx(10.0)
    assert calls.mean() > 13
    assert trimmed_mean(np.stack([calls, 2 * calls]), axis=1) == pytest.approx([10.0, 20.0])


def test_fixed_threads_sets_and_restores():
    before = torch.get_num_threads()
    with fixed_threads(1):
        assert torch.get_num_threads() == 1
        assert time_interleaved({"x": lambda i: None}, n_calls=2, warmup=0).threads["torch_intra_op"] == 1
    assert torch.get_num_threads() == before


def test_environment_capture():
    env = environment(2)
    assert env["threads"] == 2 and env["cores"] >= 1 and env["cpu"]
    assert {"cpu_flags", "loadavg_1m", "omp_wait_policy", "date", "versions", "torch_quantized_engine"} <= set(env)
    assert env["versions"]["torch"] == torch.__version__


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_events_and_peak_memory():
    x = torch.randn(2048, 2048, device="cuda")
    t = time_interleaved({"mm": lambda i: x @ x, "mm2": lambda i: (x @ x) @ x}, n_calls=10, warmup=2,
                         device="cuda")
    assert t.device == "cuda" and 1.5 < t.ratio("mm2", "mm").value < 2.5
    assert t.cuda_max_allocated_mb["mm2"] >= 2 * 16  # x plus two 16 MB results


def test_a_started_process_reports_its_own_peak_rss_not_its_parents():
    """ru_maxrss survives execve: a worker started by a big bench process would report the
    parent's peak as its own (2180 MB on every row of a real run)."""
    import subprocess
    import sys

    from bench.timing import peak_rss_mb

    ballast = np.ones(400 * 2**20 // 8)  # 400 MB resident in this process
    assert peak_rss_mb() > 400
    out = subprocess.run([sys.executable, "-c", "from bench.timing import peak_rss_mb; print(peak_rss_mb())"],
                         capture_output=True, text=True, check=True).stdout
    assert float(out) < 300, out  # a bare interpreter with numpy imported
    del ballast

"""Weight averaging and the greedy soup's order, on plain tensors (no training)."""
from __future__ import annotations

import pytest
import torch

from chain.ensemble import simplex, tune_weights
from chain.soup import average_states, greedy_order


def test_average_states_means_floats_and_keeps_integer_buffers():
    a = {"w": torch.tensor([1.0, 2.0]), "pos": torch.tensor([0, 1, 2])}
    b = {"w": torch.tensor([3.0, 6.0]), "pos": torch.tensor([0, 1, 2])}
    out = average_states([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0]))
    assert out["pos"].dtype == torch.int64 and torch.equal(out["pos"], a["pos"])


def test_soup_of_one_model_is_that_model():
    torch.manual_seed(0)
    s = {"w": torch.randn(4, 3, dtype=torch.float16)}
    out = average_states([s])
    assert out["w"].dtype == torch.float16 and torch.equal(out["w"], s["w"])


def test_greedy_order_is_best_dev_first_ties_by_position():
    assert greedy_order([0.80, 0.85, 0.85, 0.70]) == [1, 2, 0, 3]


def test_simplex_covers_every_weighting_summing_to_one():
    pts = simplex(3, 0.5)
    assert sorted(pts) == sorted([(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)])
    assert len(simplex(3, 0.1)) == 66 and all(sum(p) == pytest.approx(1) for p in simplex(4, 0.25))


def test_tune_weights_finds_the_one_good_member_and_falls_back_to_uniform():
    import numpy as np

    y = [0, 1, 0, 1]
    good = np.array([[1.0, 0], [0, 1], [1, 0], [0, 1]])
    bad = -good
    w, acc = tune_weights([bad, good, bad], y, 0.25)
    assert acc == 1.0 and w[1] > w[0] + w[2]
    w, acc = tune_weights([good, good, good], y, 0.25)  # every weighting ties: the plain average
    assert w == pytest.approx((1 / 3,) * 3) and acc == 1.0

"""Train/test text overlap across a chain's tasks, and `decontaminate: true` removing it."""
from __future__ import annotations

import pytest

from chain.__main__ import main
from chain.errors import SpecError
from chain.finetune import FineTuneConfig, train_dev
from chain.overlap import train_eval_overlap
from chain.report import overlap_section
from chain.spec import load_spec
from tests.chain.conftest import make_spec
from tests.conftest import write_tsv

SHARED = ["the film was good", "a story of football", "it was really awful"]


def _tasks(tmp_path) -> dict:
    """Task `a` trains on three of task `b`'s test sentences (one with other case and spacing)."""
    a_train = [(i % 2, f"a train sentence number {i}") for i in range(20)]
    a_train += [(0, SHARED[0]), (1, "A  story of Football "), (0, SHARED[2])]
    b_test = [(i % 2, s) for i, s in enumerate(SHARED)] + [(1, f"b test sentence {i}") for i in range(9)]
    files = {
        "a": {"train": a_train, "dev": [(i % 2, f"a dev {i}") for i in range(6)],
              "test": [(i % 2, f"a test {i}") for i in range(6)]},
        "b": {"train": [(i % 2, f"b train {i}") for i in range(20)], "dev": [(i % 2, f"b dev {i}") for i in range(6)],
              "test": b_test},
    }
    return {name: {"files": {split: str(write_tsv(tmp_path / f"{name}_{split}.tsv", rows))
                             for split, rows in splits.items()}, "num_labels": 2}
            for name, splits in files.items()}


STAGES = [{"name": "sa", "type": "finetune", "task": "a"}, {"name": "sb", "type": "finetune", "task": "b"}]


def test_overlap_counts_what_each_stage_trains_on(tmp_path, tiny_bert_dir):
    spec = load_spec(make_spec(tmp_path / "s.yaml", tiny_bert_dir, _tasks(tmp_path), STAGES))
    rows = train_eval_overlap(spec)
    assert rows == [{"stage": "sa", "train_task": "a", "eval_task": "b", "split": "test", "shared": 3,
                     "eval_size": 12, "fraction": 0.25}]


def test_report_section_lists_each_pair(tmp_path, tiny_bert_dir):
    spec = load_spec(make_spec(tmp_path / "s.yaml", tiny_bert_dir, _tasks(tmp_path), STAGES))
    md = "\n".join(overlap_section(train_eval_overlap(spec)))
    assert "## Train/test text overlap" in md and "| sa | a | b (test) | 3 | 12 (25.0%) |" in md
    assert overlap_section([]) == []


def test_decontaminate_drops_every_scored_text_from_training(tmp_path, tiny_bert_dir):
    spec = load_spec(make_spec(tmp_path / "s.yaml", tiny_bert_dir, _tasks(tmp_path), STAGES, decontaminate=True))
    assert train_eval_overlap(spec) == []
    sa = spec.stages[0].config
    assert [e["split"] for e in sa.exclude] == ["test", "test"]
    train, dev = train_dev(sa.get_task(), sa)
    assert len(train) == 20 and not set(SHARED) & set(train.texts) and len(dev) == 6


def test_validate_prints_the_overlap(tmp_path, tiny_bert_dir, capsys):
    p = make_spec(tmp_path / "s.yaml", tiny_bert_dir, _tasks(tmp_path), STAGES)
    assert main(["validate", str(p)]) == 0
    out = capsys.readouterr().out
    assert "note: stage sa trains on 3 of b's 12 unique test sentences (a data)" in out


def test_exclude_errors_are_clear(tmp_path, tiny_bert_dir):
    with pytest.raises(SpecError, match=r"finetune.exclude\[0\] must be"):
        FineTuneConfig(exclude=[{"task": "sst2"}])
    tasks = _tasks(tmp_path)
    same = {"task": {"name": "a", "files": tasks["a"]["files"], "num_labels": 2}, "split": "train"}
    cfg = FineTuneConfig(task=same["task"], exclude=[same])
    with pytest.raises(SpecError, match="removes every training text of task 'a'"):
        train_dev(cfg.get_task(), cfg)


@pytest.mark.parametrize("exclude, message", [
    ({"task": "nope", "split": "test"}, r"exclude\[0\]\.task: unknown built-in task 'nope'"),
    ({"task": "sst2", "split": "validation"}, r"exclude\[0\]\.split: task 'sst2' has no 'validation' split"),
])
def test_bad_exclude_is_a_spec_error_before_training(tmp_path, tiny_bert_dir, exclude, message):
    stages = [{"name": "sa", "type": "finetune", "task": "a", "config": {"exclude": [exclude]}}]
    with pytest.raises(SpecError, match=r"stages\[0\] \(sa\)\.config\." + message):
        load_spec(make_spec(tmp_path / "s.yaml", tiny_bert_dir, _tasks(tmp_path), stages))


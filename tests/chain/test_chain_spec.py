"""Spec validation: every bad spec fails with a message naming the field, before training."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from chain.__main__ import main
from chain.errors import DataError, ModelError, SpecError
from chain.executor import run_chain
from chain.finetune import FineTuneConfig, LoraSettings
from chain.spec import check_inputs, load_spec, parse_spec
from tests.conftest import write_tsv

REPO = Path(__file__).resolve().parents[2]


def _spec(tmp_path: Path, model: Path, tasks: dict, stages: list, **top) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump({"model": str(model), "tasks": tasks, "stages": stages, **top}, sort_keys=False))
    return p


def _ft(name="a", task="senti", **kw):
    return {"name": name, "type": "finetune", "task": task, **kw}


@pytest.mark.parametrize("stages,match", [
    ([{"name": "a", "type": "prune_heads"}], r"stages\[0\] \(a\)\.type: unknown stage type 'prune_heads'; known types: .*finetune"),
    ([_ft(config={"epochs": "three"})], r"stages\[0\] \(a\)\.config\.epochs: expected a number, got str 'three'"),
    ([_ft(config={"batch_size": 16.5})], r"config\.batch_size: expected an integer"),
    ([_ft(config={"freeze": "embeddings"})], r"config\.freeze: expected a list"),
    ([_ft(config={"epoch": 1})], r"config: unknown field\(s\) \['epoch'\]; known: task, epochs"),
    ([_ft(config={"lora": {"r": 0}})], r"lora.r must be a positive integer"),
    ([_ft(config={"task": "sst2"})], r"config\.task: name the task at stage level"),
    ([{"name": "a", "type": "finetune"}], r"stages\[0\] \(a\)\.task: a finetune stage trains on a task; give one"),
    ([_ft(task="imdb")], r"'imdb' is neither in `tasks` nor a built-in"),
    ([_ft(), _ft()], r"the name 'a' is used twice"),
    ([_ft(parent="zzz")], r"parent: 'zzz' is not an earlier stage"),
    ([_ft(gate={"max_drop": 5})], r"gate\.max_drop is an accuracy fraction"),
    ([_ft(gate={"on_fail": "panic"})], r"gate\.on_fail must be one of"),
    ([_ft(), {"name": "q", "type": "quantize_int8", "gate": {"on_fail": "retry"}}],
     r"retry changes a training setting, and a quantize_int8 stage has none"),
    ([_ft(), {"name": "q", "type": "quantize_int8", "config": {"skip": "classifier"}}], r"config\.skip: expected a list"),
    ([], r"stages: give a non-empty list"),
    ([_ft(name="../x")], r"stages\[0\]\.name"),
])
def test_bad_stage_specs(tmp_path, tiny_bert_dir, easy_tasks, stages, match):
    with pytest.raises(SpecError, match=match):
        load_spec(_spec(tmp_path, tiny_bert_dir, easy_tasks, stages), check=False)


def test_unknown_top_level_key_and_bad_yaml(tmp_path, tiny_bert_dir, easy_tasks):
    with pytest.raises(SpecError, match=r"unknown top-level key\(s\) \['gates'\]"):
        load_spec(_spec(tmp_path, tiny_bert_dir, easy_tasks, [_ft()], gates={}), check=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [a, b\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.yaml")


def test_task_spec_errors(tmp_path, tiny_bert_dir):
    from chain.errors import DataError

    # no num_labels: it is inferred from the label names, so the data is read (and here missing)
    with pytest.raises(DataError, match=r"tasks\.t: .*x\.tsv not found"):
        load_spec(_spec(tmp_path, tiny_bert_dir, {"t": {"files": {"train": "x.tsv"}}}, [_ft(task="t")]), check=False)
    with pytest.raises(SpecError, match=r"tasks\.t: unknown field\(s\) \['label'\]"):
        load_spec(_spec(tmp_path, tiny_bert_dir, {"t": {"files": {}, "num_labels": 2, "label": "y"}},
                        [_ft(task="t")]), check=False)
    with pytest.raises(SpecError, match=r"tasks\.t\.num_labels: expected an integer"):
        load_spec(_spec(tmp_path, tiny_bert_dir, {"t": {"files": {"train": "a"}, "num_labels": "two"}},
                        [_ft(task="t")]), check=False)


def _files(tmp_path, train, test, dev=None):
    out = {"train": str(write_tsv(tmp_path / "train.tsv", train)), "test": str(write_tsv(tmp_path / "test.tsv", test))}
    if dev:
        out["dev"] = str(write_tsv(tmp_path / "dev.tsv", dev))
    return out


GOOD = [(0, "bad film"), (1, "good film"), (0, "awful"), (1, "great")]


@pytest.mark.parametrize("files,err,match", [
    (lambda p: {"train": str(p / "missing.tsv"), "test": str(p / "missing.tsv")}, DataError,
     r"tasks\.t: task 't': data file .*missing\.tsv not found"),
    (lambda p: _files(p, GOOD + [(2, "meh")], GOOD), DataError, r"line 6: label 2 is outside 0\.\.1"),
    (lambda p: _files(p, [(0, "bad"), (0, "awful")], GOOD), DataError, r"train split has a single label"),
    (lambda p: _files(p, [(0, "bad"), (1, "good"), (0, "x")], [(2, "meh")]), DataError,
     r"label\(s\) \[2\] occur in the test split but never in train"),
    (lambda p: {"train": _files(p, GOOD, GOOD)["train"]}, DataError, r"has no test split"),
])
def test_bad_data_fails_before_training(tmp_path, tiny_bert_dir, files, err, match):
    n = 3 if "outside" not in match else 2
    tasks = {"t": {"files": files(tmp_path), "num_labels": n}}
    spec = load_spec(_spec(tmp_path, tiny_bert_dir, tasks, [_ft(task="t")]), check=False)
    with pytest.raises(err, match=match):
        check_inputs(spec)
    # run_chain checks too, and nothing is trained or published
    with pytest.raises(err, match=match):
        run_chain(spec, tmp_path / "out", log=lambda _: None)
    assert not (tmp_path / "out" / "artifacts").exists()


def test_bad_later_task_stops_before_first_stage_trains(tmp_path, tiny_bert_dir, easy_tasks):
    bad = _files(tmp_path, GOOD, [(1, "good"), (0, "bad")])
    write_tsv(Path(bad["test"]), [(1, "ok"), (5, "broken")])
    tasks = {**easy_tasks, "later": {"files": bad, "num_labels": 2}}
    spec = load_spec(_spec(tmp_path, tiny_bert_dir, tasks, [_ft(), _ft(name="b", task="later")]), check=False)
    with pytest.raises(DataError, match=r"tasks\.later: .*label 5 is outside"):
        run_chain(spec, tmp_path / "out", log=lambda _: None)
    assert not (tmp_path / "out" / "artifacts").exists()


def test_missing_model_dir(tmp_path, easy_tasks):
    spec = load_spec(_spec(tmp_path, tmp_path / "no-model", easy_tasks, [_ft()]), check=False)
    with pytest.raises(ModelError, match="not a directory"):
        check_inputs(spec)


def test_yaml_scientific_notation_and_defaults(tmp_path, tiny_bert_dir, easy_tasks):
    p = _spec(tmp_path, tiny_bert_dir, easy_tasks,
              [_ft(config={"learning_rate": "1e-4"}), {"name": "q", "type": "quantize_int8"}],
              defaults={"finetune": {"epochs": 2, "lora": {"r": 4}}}, seed=7, gate={"max_drop": 0.02},
              baseline=True)
    p.write_text(p.read_text().replace("'1e-4'", "1e-4"))  # unquoted: PyYAML reads a string
    spec = load_spec(p)
    ft = spec.stages[0].config
    assert isinstance(ft, FineTuneConfig) and ft.learning_rate == 1e-4 and ft.epochs == 2 and ft.seed == 7
    assert ft.lora == LoraSettings(r=4) and ft.task["name"] == "senti"
    assert spec.stages[1].gate.max_drop == 0.02 and spec.stages[1].config.skip == ("classifier", "*.classifier")
    assert spec.baseline and spec.baseline_stage().name == "a"


def test_paths_are_relative_to_the_spec_file(tmp_path, tiny_bert_dir):
    d = tmp_path / "specs"
    d.mkdir()
    files = _files(tmp_path, GOOD, GOOD)
    rel = {k: str(Path("..") / Path(v).name) for k, v in files.items()}
    p = d / "s.yaml"
    p.write_text(yaml.safe_dump({"model": str(tiny_bert_dir), "output": "../out",
                                 "tasks": {"t": {"files": rel, "num_labels": 2}}, "stages": [_ft(task="t")]}))
    spec = load_spec(p)
    assert spec.output == (tmp_path / "out").resolve()
    assert Path(spec.tasks["t"].files["train"]) == Path(files["train"]).resolve()


def test_datasets_directory_task(tmp_path, tiny_bert_dir):
    from datasets import Dataset, DatasetDict

    rows = {"text": [s for _, s in GOOD], "y": [y for y, _ in GOOD]}
    DatasetDict({"train": Dataset.from_dict(rows), "validation": Dataset.from_dict(rows),
                 "test": Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "ds"))
    tasks = {"t": {"dataset": "ds", "num_labels": 2, "text_column": "text", "label_column": "y"}}
    spec = load_spec(_spec(tmp_path, tiny_bert_dir, tasks, [_ft(task="t")]))
    t = spec.tasks["t"]
    assert t.has_split("dev") and t.load("dev").labels == [0, 1, 0, 1] and t.check() == {"train": 4, "dev": 4, "test": 4}
    tasks["t"]["splits"] = {"test": "holdout"}
    with pytest.raises(DataError, match="has no split 'holdout'"):
        load_spec(_spec(tmp_path, tiny_bert_dir, tasks, [_ft(task="t")]))


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "examples").glob("*.yaml")))
def test_example_specs_validate(name):
    spec = load_spec(REPO / "examples" / name)
    assert spec.stages and all(s.task or s.type != "finetune" for s in spec.stages)


def test_sentiment_example_is_subj_sst5_sst2():
    spec = load_spec(REPO / "examples" / "sentiment_chain.yaml", check=False)
    assert [s.task for s in spec.stages if s.type == "finetune"] == ["subj", "sst5", "sst2"]
    # decontaminated: every fine-tune stage excludes the test split of every task
    assert all([e["split"] for e in s.config.exclude] == ["test"] * 3 for s in spec.stages[:3])


def test_cli_errors_are_one_line_exit_2(tmp_path, tiny_bert_dir, easy_tasks, capsys):
    p = _spec(tmp_path, tiny_bert_dir, easy_tasks, [{"name": "a", "type": "nope"}])
    assert main(["run", str(p), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: stages[0] (a).type: unknown stage type 'nope'") and "Traceback" not in err
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2


def test_cli_validate_ok(tmp_path, tiny_bert_dir, easy_tasks, capsys):
    p = _spec(tmp_path, tiny_bert_dir, easy_tasks, [_ft(), _ft(name="b", task="topic")])
    assert main(["validate", str(p)]) == 0
    assert "ok; 2 stages" in capsys.readouterr().out


def test_parse_spec_api_without_file(tiny_bert_dir, easy_tasks):
    spec = parse_spec({"model": str(tiny_bert_dir), "tasks": easy_tasks, "stages": [_ft()]})
    assert spec.name == "chain" and spec.stages[0].task == "senti"

"""Label names: string labels in every format, a recorded order, ClassLabel datasets,
id2label in fine-tuned artifacts and their ONNX export, and bad data as one-line errors."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from chain.errors import DataError, SpecError
from chain.task import Task, builtin_task
from tests.chain.conftest import make_spec, sentiment_rows
from tests.conftest import REPO

NAMES = {0: "neg", 1: "pos"}


def _write(path: Path, rows: list[tuple], fmt: str, header=("label", "sentence")) -> str:
    """rows of (label, text) as TSV, CSV or JSONL."""
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(dict(zip(header, r))) + "\n" for r in rows))
    elif fmt == "csv":
        with path.open("w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
    else:
        path.write_text("\t".join(header) + "\n" + "".join(f"{a}\t{b}\n" for a, b in rows))
    return str(path)


def _files(tmp: Path, fmt: str, rows=None, name="d") -> dict:
    rows = rows or {"train": [("pos", "good film"), ("neg", "bad film"), ("pos", "great")],
                    "test": [("neg", "awful"), ("pos", "lovely")]}
    return {s: _write(tmp / f"{name}_{s}.{fmt}", r, fmt) for s, r in rows.items()}


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# ---- string labels -----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl"])
def test_string_labels_map_to_sorted_ids_in_every_format(tmp_path, fmt):
    t = Task("t", _files(tmp_path, fmt))  # no num_labels: inferred from the names
    assert t.num_labels == 2 and t.label_names() == ["neg", "pos"]
    assert t.load("train").labels == [1, 0, 1] and t.load("test").labels == [0, 1]
    assert t.id2label() == {0: "neg", 1: "pos"}
    assert t.check() == {"train": 3, "test": 2}


def test_explicit_labels_fix_the_order_and_the_fingerprint_follows_it(tmp_path):
    files = _files(tmp_path, "csv")
    a = Task("t", files, labels=["pos", "neg"])
    b = Task("t", files, labels=["neg", "pos"])
    assert a.load("train").labels == [0, 1, 0] and b.load("train").labels == [1, 0, 1]
    assert a.id2label() == {0: "pos", 1: "neg"} and a.num_labels == 2
    assert a.fingerprint() != b.fingerprint()
    # the recorded definition round-trips and loading does not change it (stable cache keys)
    before = a.fingerprint()
    a.check()
    assert a.fingerprint() == before and Task.from_dict(a.to_dict()).id2label() == a.id2label()


def test_inferred_order_changes_with_the_train_names(tmp_path):
    t = Task("t", _files(tmp_path, "tsv"))
    fp = t.fingerprint()
    _write(Path(t.files["train"]), [("zz", "x"), ("neg", "y"), ("pos", "z")], "tsv")
    with pytest.raises(DataError, match="train split has 3 label names"):
        Task("t", t.files, num_labels=2).label_space()
    assert Task("t", t.files).label_names() == ["neg", "pos", "zz"] and Task("t", t.files).fingerprint() != fp


def test_explicit_labels_accept_ids_too_and_check_num_labels(tmp_path):
    files = _files(tmp_path, "tsv", {"train": [(1, "good"), (0, "bad")], "test": [(0, "awful")]})
    t = Task("t", files, 2, labels=["negative", "positive"])
    assert t.load("train").labels == [1, 0] and t.id2label()[1] == "positive"
    with pytest.raises(SpecError, match="num_labels is 3 but `labels` names 2"):
        Task("t", files, 3, labels=["negative", "positive"])
    with pytest.raises(SpecError, match="repeats"):
        Task("t", files, labels=["a", "a"])


def test_a_file_mixing_names_and_ids_is_refused(tmp_path):
    files = _files(tmp_path, "tsv", {"train": [("neg", "x"), ("pos", "y")], "test": [("neg", "x"), (1, "y")]})
    with pytest.raises(DataError, match=r"d_test.tsv line 3: label '1' is an integer id but line 2 has a name"):
        Task("t", files, labels=["neg", "pos"]).load("test")


def test_numeric_names_are_names_not_ids(tmp_path):
    """Star ratings 1..5 named in `labels`: "1" is class 0, and "0" is no id at all."""
    rows = {"train": [(s, f"text {s}") for s in "12345"], "test": [("0", "zero stars")]}
    t = Task("t", _files(tmp_path, "csv", rows), labels=["1", "2", "3", "4", "5"])
    assert t.load("train").labels == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match=r"line 2: label '0' is not one of the task's `labels`"):
        t.load("test")


def test_integer_labels_are_unchanged(tmp_path):
    files = _files(tmp_path, "tsv", {"train": [(1, "good"), (0, "bad")], "test": [(0, "awful")]})
    t = Task("t", files, 2)
    assert t.load("train").labels == [1, 0] and t.label_names() is None
    assert t.id2label() == {0: "LABEL_0", 1: "LABEL_1"} and t.to_dict()["labels"] is None
    with pytest.raises(DataError, match="integer ids; give `num_labels`"):
        Task("t", files)


def test_unknown_test_label_names_file_and_line(tmp_path):
    rows = {"train": [("pos", "good"), ("neg", "bad")], "test": [("neg", "awful"), ("meh", "so so")]}
    t = Task("t", _files(tmp_path, "jsonl", rows))
    with pytest.raises(DataError) as e:
        t.check()
    assert "d_test.jsonl line 2: label 'meh' never occurs in the train split" in _one_line(e)


def test_named_test_label_never_in_train_is_an_error(tmp_path):
    rows = {"train": [("pos", "good"), ("neg", "bad")], "test": [("meh", "so so")]}
    t = Task("t", _files(tmp_path, "csv", rows), labels=["neg", "pos", "meh"])
    with pytest.raises(DataError, match=r"label\(s\) \['meh'\] occur in the test split but never in train"):
        t.check()


def test_holdout_with_string_labels(tmp_path):
    rows = [("pos" if i % 2 else "neg", f"sentence {i}") for i in range(40)]
    t = Task("t", {"all": _write(tmp_path / "all.jsonl", rows, "jsonl")}, holdout={"test": 0.25})
    sizes = t.check()
    assert sizes == {"train": 30, "test": 10} and t.label_names() == ["neg", "pos"]


def test_a_tiny_train_file_still_holds_out_a_dev_example_or_says_why(tmp_path):
    rows = [("pos", "good"), ("neg", "bad"), ("pos", "fine"), ("neg", "poor"), ("pos", "nice")]
    t = Task("t", {"train": _write(tmp_path / "tr.csv", rows, "csv"),
                   "test": _write(tmp_path / "te.csv", rows[:2], "csv")}, holdout={"dev": 0.1})
    assert t.check() == {"train": 4, "dev": 1, "test": 2}  # round(0.5) would have carved none
    one = Task("t", {"train": _write(tmp_path / "one.csv", rows[:1], "csv"),
                     "test": _write(tmp_path / "te.csv", rows[:2], "csv")}, holdout={"dev": 0.1})
    assert any("1 example(s), too few to hold out 0.1 of them as the 'dev' split" in p for p in one.problems())
    # a problem in the file the holdout is carved from is said once, not again for the carved split
    bad = Task("t", {"train": _write(tmp_path / "b.csv", rows[:1], "csv", header=("polarity", "sentence")),
                     "test": _write(tmp_path / "te.csv", rows[:2], "csv")}, holdout={"dev": 0.1},
               labels=["neg", "pos"])
    assert [p for p in bad.problems() if "no column 'label'" in p] == bad.problems()[:1]
    assert len(bad.problems()) == 1


def test_builtin_names_follow_the_data_readme():
    assert builtin_task("sst2").id2label() == {0: "negative", 1: "positive"}
    assert builtin_task("subj").id2label() == {0: "subjective", 1: "objective"}
    assert builtin_task("trec").label_names() == ["DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"]
    assert builtin_task("sst5").label_names()[2] == "neutral"
    test = builtin_task("trec").load("test")  # "How far is it from Denver to Aspen ?" is NUM
    assert test.texts[0].startswith("How far") and builtin_task("trec").id2label()[test.labels[0]] == "NUM"


def test_evaluation_only_task_needs_labels_for_names(tmp_path):
    """A task with a dev split only (sensitivity reports): ids work as before, names need `labels`."""
    ids = {"dev": _write(tmp_path / "ids.tsv", [(1, "good"), (0, "bad")], "tsv")}
    assert Task("t", ids, 2).load("dev").labels == [1, 0]
    named = {"dev": _write(tmp_path / "named.tsv", [("pos", "good"), ("neg", "bad")], "tsv")}
    with pytest.raises(DataError, match="no train split to read the label names from"):
        Task("t", named, 2).load("dev")
    assert Task("t", named, labels=["pos", "neg"]).load("dev").labels == [0, 1]


def test_number_labels_ids_as_pandas_writes_them_and_scores_refused(tmp_path):
    floats = {"train": _write(tmp_path / "f.csv", [("1.0", "good"), ("0.0", "bad")], "csv")}
    assert Task("t", floats, 2).load("train").labels == [1, 0]
    scores = {"train": _write(tmp_path / "s.jsonl", [(3.8, "good"), (1.2, "bad")], "jsonl")}
    with pytest.raises(DataError, match=r"s.jsonl line 1: label 3.8 is a fractional number"):
        Task("t", scores, 2).load("train")
    nan = tmp_path / "n.jsonl"
    nan.write_text('{"sentence": "a", "label": 1}\n{"sentence": "b", "label": NaN}\n')
    with pytest.raises(DataError, match=r"n.jsonl line 2: no label"):
        Task("t", {"train": str(nan)}, 2).load("train")


# ---- datasets ----------------------------------------------------------------------------

def test_classlabel_dataset_names(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    feats = Features({"text": Value("string"), "label": ClassLabel(names=["spam", "ham"])})
    ds = {s: Dataset.from_dict({"text": ["buy now", "hi mum", "win cash"], "label": [0, 1, 0]}, features=feats)
          for s in ("train", "test")}
    DatasetDict(ds).save_to_disk(str(tmp_path / "ds"))
    t = Task("t", {}, dataset=str(tmp_path / "ds"), text_column="text")
    assert t.num_labels == 2 and t.id2label() == {0: "spam", 1: "ham"} and t.load("test").labels == [0, 1, 0]
    with pytest.raises(DataError, match=r"ClassLabel names are \['spam', 'ham'\] but the task's `labels`"):
        Task("t", {}, dataset=str(tmp_path / "ds"), text_column="text", labels=["ham", "spam"]).label_space()
    other = Task("t", {}, dataset=str(tmp_path / "ds"), text_column="text", labels=["spam", "ham"])
    assert other.fingerprint() != t.fingerprint()


def test_string_column_dataset_and_broken_dataset_dir(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"sentence": ["a", "b"], "label": ["yes", "no"]}),
                 "test": Dataset.from_dict({"sentence": ["c"], "label": ["maybe"]})}).save_to_disk(str(tmp_path / "ds"))
    t = Task("t", {}, dataset=str(tmp_path / "ds"))
    assert t.label_names() == ["no", "yes"] and t.load("train").labels == [1, 0]
    with pytest.raises(DataError, match=r"ds\[test\] row 1: label 'maybe' never occurs in the train split"):
        t.load("test")
    (tmp_path / "ds" / "dataset_dict.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(DataError, match="not the JSON that DatasetDict.save_to_disk writes"):
        Task("t", {}, dataset=str(tmp_path / "ds"), num_labels=2).load("train")


# ---- bad input: one DataError line, naming the file and what to do -----------------------

BAD = {
    "jsonl_list": ("d.jsonl", b'{"sentence": "ok", "label": 0}\n[1, "x"]\n', r"d.jsonl line 2: expected a JSON object"),
    "jsonl_string": ("d.jsonl", b'"just text"\n', r"line 1: expected a JSON object .* got a JSON str"),
    "jsonl_broken": ("d.jsonl", b'{"sentence": "ok", "label": 0}\n\n{"sentence": \n', r"line 3 is not valid JSON"),
    "csv_huge_field": ("d.csv", b'label,sentence\n0,fine\n1,"' + b"x" * 140_000 + b'"\n',
                       r"d.csv line 3: a field is longer than 131,072 characters .* unclosed quote"),
    "tsv_huge_field": ("d.tsv", b"label\tsentence\n0\t" + b"y" * 140_000 + b"\n",
                       r"d.tsv line 2: a field is longer than 131,072 characters .* shorten"),
    "latin1": ("d.tsv", "label\tsentence\n0\tok\n1\tcaf\u00e9\n".encode("latin-1"),
               r"d.tsv line 3 is not UTF-8 \(byte 0xe9\); save the file as UTF-8"),
    "binary": ("d.csv", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03",  # a gzip header
               r"d.csv line 1 holds a NUL byte: the file is binary"),
    "empty": ("d.tsv", b"", r"d.tsv is empty \(no header, no data rows\); give a header row"),
    "blank": ("d.csv", b"\n \n", r"d.csv is empty"),
    "header_only": ("d.tsv", b"label\tsentence\n", r"d.tsv has no data rows"),
    "no_label_column": ("d.csv", b"y,sentence\n0,x\n", r"d.csv has no column 'label' \(columns: \['sentence', 'y'\]\); "
                                                       r"set `label_column`"),
    "no_text_column": ("d.jsonl", b'{"text": "x", "label": 0}\n', r"has no column 'sentence' .* set `text_column`"),
    "jsonl_row_without_label": ("d.jsonl", b'{"sentence": "x", "label": 0}\n{"sentence": "y"}\n',
                                r"d.jsonl line 2 has no field 'label'"),
    "csv_short_row": ("d.csv", b"label,sentence\n0,x\n1\n", r"d.csv line 3: empty text in column 'sentence'"),
    "empty_label": ("d.csv", b"label,sentence\n0,x\n,y\n", r"d.csv line 3: no label"),
    "jsonl_number_text": ("d.jsonl", b'{"sentence": 5, "label": 0}\n', r"line 1: non-string text"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_is_one_line_naming_the_file(tmp_path, case):
    name, data, pattern = BAD[case]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError, match=pattern) as e:
        Task("t", {"train": str(tmp_path / name)}, 2).load("train")
    assert _one_line(e).startswith("task 't': ")


def test_utf8_bom_is_accepted(tmp_path):
    p = tmp_path / "excel.csv"
    p.write_bytes("label,sentence\npos,très bien\nneg,nul\n".encode("utf-8-sig"))
    assert Task("t", {"train": str(p)}).load("train").labels == [1, 0]


def test_jsonl_line_numbers_count_blank_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"sentence": "a", "label": "x"}\n\n{"sentence": "b", "label": 1}\n')
    with pytest.raises(DataError, match="line 3: label 1 is an integer id but line 1 has a name"):
        Task("t", {"train": str(p)}, labels=["x", "y"]).load("train")


def test_damaged_dataset_and_directory_as_file(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"sentence": ["a", "b"] * 20, "label": [0, 1] * 20})}).save_to_disk(
        str(tmp_path / "ds"))
    arrow = next((tmp_path / "ds" / "train").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:200])
    with pytest.raises(DataError, match=r"ds cannot be loaded as a saved dataset .* write it again") as e:
        Task("t", {}, 2, dataset=str(tmp_path / "ds")).load("train")
    _one_line(e)
    with pytest.raises(DataError, match="is a directory; give the TSV/CSV/JSONL file"):
        Task("t", {"train": str(tmp_path / "ds")}, 2).load("train")

def test_problems_lists_every_split_at_once(tmp_path):
    """For `chain validate` reporting everything: each broken split once, then the cross-split checks."""
    files = {"train": _write(tmp_path / "tr.tsv", [("pos", "a"), ("neg", "b")], "tsv"),
             "dev": _write(tmp_path / "dv.tsv", [("pos", "a"), ("pos", "")], "tsv"),
             "test": _write(tmp_path / "te.tsv", [("meh", "c")], "tsv")}
    t = Task("t", files, labels=["neg", "pos", "meh"])
    problems = t.problems()
    assert len(problems) == 2 and "dv.tsv line 3: empty text" in problems[0]
    assert "label(s) ['meh'] occur in the test split but never in train" in problems[1]
    with pytest.raises(DataError, match="dv.tsv line 3"):
        t.check()
    assert Task("t", {"test": files["test"]}, labels=["meh", "x"]).problems() == [
        "task 't' has no train split; give a `train` (or `all`) file"]

def test_chain_validate_reports_bad_data_in_one_line(tmp_path, tiny_bert_dir):
    """End to end: `python -m chain validate` on a spec whose task file is broken: exit 2, one line."""
    good = _write(tmp_path / "test.tsv", [(0, "a"), (1, "b")], "tsv")
    (tmp_path / "train.jsonl").write_text('{"sentence": "a", "label": 0}\n[0, "b"]\n')
    tasks = {"t": {"files": {"train": str(tmp_path / "train.jsonl"), "test": good}, "num_labels": 2}}
    spec = make_spec(tmp_path / "s.yaml", tiny_bert_dir, tasks, [{"name": "a", "type": "finetune", "task": "t"}])
    r = subprocess.run([sys.executable, "-m", "chain", "validate", str(spec)], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.jsonl line 2: expected a JSON object" in lines[0], r.stderr


# ---- artifacts: id2label in config, heads, pipeline(), ONNX ------------------------------

@pytest.fixture(scope="module")
def labelled_chain(tmp_path_factory, tiny_bert_dir):
    """senti (string labels neg/pos, CSV) -> sst2 (64 built-in examples); senti -> ONNX -> ONNX int8;
    senti -> PyTorch int8."""
    from chain.executor import run_chain
    from chain.spec import load_spec

    tmp = tmp_path_factory.mktemp("labels")
    files = {}
    for i, (split, n) in enumerate((("train", 128), ("dev", 32), ("test", 64))):
        rows = [(NAMES[y], text) for y, text in sentiment_rows(n, seed=100 * i + 5)]
        files[split] = _write(tmp / f"senti_{split}.csv", rows, "csv")
    tasks = {"senti": {"files": files, "num_labels": 2}}
    stages = [{"name": "senti", "type": "finetune", "task": "senti"},
              {"name": "sst2", "type": "finetune", "task": "sst2",
               "config": {"max_train_samples": 64, "max_eval_samples": 32, "epochs": 1}},
              {"name": "onnx", "type": "export_onnx", "parent": "senti"},
              {"name": "onnx-int8", "type": "quantize_onnx_int8", "parent": "onnx"},
              {"name": "int8", "type": "quantize_int8", "parent": "senti"}]
    spec = load_spec(make_spec(tmp / "labels.yaml", tiny_bert_dir, tasks, stages,
                               eval={"max_length": 16, "threads": 1, "max_samples": 64}))
    res = run_chain(spec, tmp / "out", log=lambda _: None)
    arts = {s["name"]: Path(s["artifact"]) for s in res["stages"]}
    assert set(arts) == {"senti", "sst2", "onnx", "onnx-int8", "int8"}, res["stages"]
    return arts


def _texts() -> list[str]:
    return ["a really good and great film", "the story was awful and boring", "lovely superb today"]


def test_finetuned_artifact_config_carries_the_task_names(labelled_chain):
    for stage, names in (("senti", {"0": "neg", "1": "pos"}), ("sst2", {"0": "negative", "1": "positive"})):
        cfg = json.loads((labelled_chain[stage] / "config.json").read_text())
        assert cfg["id2label"] == names and cfg["label2id"] == {v: int(k) for k, v in names.items()}
        assert json.loads((labelled_chain[stage] / "manifest.json").read_text())["labels"] == list(names.values())
    for stage in ("onnx", "onnx-int8", "int8"):  # compression keeps the parent's names
        cfg = json.loads((labelled_chain[stage] / "config.json").read_text())
        assert cfg["id2label"] == {"0": "neg", "1": "pos"}, stage


def test_pipeline_on_hf_and_onnx_answers_with_names(labelled_chain):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    hf_dir, onnx_dir = labelled_chain["senti"], labelled_chain["onnx"]
    hf = pipeline("text-classification", model=AutoModelForSequenceClassification.from_pretrained(hf_dir),
                  tokenizer=AutoTokenizer.from_pretrained(hf_dir))
    ort = pipeline("text-classification", model=ORTModelForSequenceClassification.from_pretrained(onnx_dir),
                   tokenizer=AutoTokenizer.from_pretrained(onnx_dir))
    ort8 = pipeline("text-classification", tokenizer=AutoTokenizer.from_pretrained(onnx_dir),
                    model=ORTModelForSequenceClassification.from_pretrained(labelled_chain["onnx-int8"]))
    hf_out, ort_out = hf(_texts()), ort(_texts())
    assert [o["label"] for o in hf_out] == [o["label"] for o in ort_out]
    assert {o["label"] for o in ort8(_texts())} <= {"neg", "pos"}
    assert {o["label"] for o in hf_out} <= {"neg", "pos"}
    assert [o["label"] for o in hf_out] == ["pos", "neg", "pos"]  # the keyword task is learnt (dev acc 1.0)


def test_head_swap_swaps_the_names(labelled_chain):
    from transformers import AutoModelForSequenceClassification

    from chain.heads import head_labels, swap_head_

    d = labelled_chain["sst2"]
    assert head_labels(d, "senti") == ["neg", "pos"] and head_labels(d, "sst2") == ["negative", "positive"]
    model = AutoModelForSequenceClassification.from_pretrained(d)
    assert model.config.id2label[1] == "positive"
    assert swap_head_(model, d, "senti") and model.config.id2label == {0: "neg", 1: "pos"}
    assert model.config.label2id == {"neg": 0, "pos": 1}
    assert not swap_head_(model, d, "trec")


def test_swapped_head_without_names_gets_generic_labels(tmp_path, tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    from chain.heads import head_state, save_head, set_head_, swap_head_

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    save_head(model, tmp_path, "old")  # saved before names were recorded
    set_head_(model, head_state(model), labels=["x", "y"])
    assert model.config.id2label == {0: "x", 1: "y"}
    assert swap_head_(model, tmp_path, "old") and model.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}


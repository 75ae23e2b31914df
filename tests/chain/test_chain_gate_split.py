"""Gates decide on the dev split (eval.gate_split), never on the test split the report shows."""
from chain.executor import run_chain
from chain.spec import load_spec
from tests.chain.conftest import make_spec, sentiment_rows, write_task
from tests.conftest import write_tsv


def test_gate_reads_dev_not_test(tmp_path, tiny_bert_dir):
    files = write_task(tmp_path / "d", "senti", sentiment_rows)
    # the same task with a dev file whose labels are all flipped: right on test, "wrong" on dev
    flipped = dict(files, dev=str(write_tsv(tmp_path / "d" / "flipped.tsv",
                                            [(1 - y, t) for y, t in sentiment_rows(32, seed=100)])))
    tasks = {"senti": {"files": files, "num_labels": 2}, "flipdev": {"files": flipped, "num_labels": 2}}
    stages = [{"name": "a", "type": "finetune", "task": "senti"},
              {"name": "q", "type": "quantize_int8", "task": "flipdev", "gate": {"min_accuracy": 0.5}}]
    spec = load_spec(make_spec(tmp_path / "s.yaml", tiny_bert_dir, tasks, stages))
    q = run_chain(spec, tmp_path / "out", log=lambda m: None)["stages"][1]
    assert q["accuracy"] >= 0.9  # the report: test split
    assert q["gate_accuracy"]["flipdev"] < 0.5 and q["status"] == "rolled_back"  # the decision: dev
    assert "below min_accuracy 0.5" in q["reason"]
    spec = load_spec(make_spec(tmp_path / "s2.yaml", tiny_bert_dir, tasks, stages,
                               eval={"max_length": 16, "threads": 1, "gate_split": None}))
    q = run_chain(spec, tmp_path / "out", log=lambda m: None)["stages"][1]
    assert q["status"] == "cached" and q["gate_accuracy"]["flipdev"] >= 0.9  # gate_split null: the report's split

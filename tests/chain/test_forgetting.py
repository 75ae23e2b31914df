"""Forgetting control: rehearsal through every earlier head, L2-SP toward the parent's encoder."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
from chain.artifact import Artifact
from chain.executor import run_chain
from chain.finetune_config import FineTuneConfig, rehearsal_split
from chain.heads import head_labels, load_head
from chain.spec import load_spec
from chain.task import Task
from tests.chain.conftest import make_spec

SENTI = {"name": "a", "type": "finetune", "task": "senti"}


def _chain(tmp_path, model, tasks, second_config: dict, name: str = "s"):
    """senti -> topic (``second_config``) in ``tmp_path/out``: the senti stage is shared by every call."""
    topic = {"name": "b", "type": "finetune", "task": "topic", "config": second_config}
    spec = load_spec(make_spec(tmp_path / f"{name}.yaml", model, tasks, [SENTI, topic]))
    res = run_chain(spec, tmp_path / "out", log=lambda *_: None)
    assert [s["status"] for s in res["stages"]] in (["ok", "ok"], ["cached", "ok"]), [s["reason"] for s in res["stages"]]
    return res["stages"]


def test_rehearsal_replays_each_earlier_task_through_its_own_head(tmp_path, tiny_bert_dir, easy_tasks):
    a, b = _chain(tmp_path, tiny_bert_dir, easy_tasks, {"rehearsal": {"fraction": 0.25}})
    # a quarter of senti's 128 training sentences, tagged with senti's head
    assert b["train"]["rehearsal_examples"] == {"senti": 32}
    assert b["train"]["steps"] == (128 + 32) // 16 * 8  # both sets in the same epochs
    parent, child = Path(a["artifact"]), Path(b["artifact"])
    old, new = load_head(parent, "senti"), load_head(child, "senti")
    assert set(old) == set(new) == {"classifier.weight", "classifier.bias"}
    assert not torch.equal(old["classifier.weight"], new["classifier.weight"])  # the senti head trained too
    assert new["classifier.weight"].shape == (2, 64)  # and kept its own 2 outputs
    assert head_labels(child, "senti") == head_labels(parent, "senti")
    # the artifact is a plain HF model with the stage's own 3-way head
    art = Artifact.load(child)
    assert art.manifest["num_labels"] == 3 and set(art.manifest["head_tasks"]) == {"senti", "topic"}
    assert b["accuracy_by_task"]["senti"] >= 0.9 and b["accuracy_by_task"]["topic"] >= 0.9


def test_without_rehearsal_earlier_heads_are_copied_unchanged(tmp_path, tiny_bert_dir, easy_tasks):
    a, b = _chain(tmp_path, tiny_bert_dir, easy_tasks, {})
    assert b["train"]["rehearsal_examples"] is None
    old, new = load_head(Path(a["artifact"]), "senti"), load_head(Path(b["artifact"]), "senti")
    assert all(torch.equal(old[k], new[k]) for k in old)


def test_rehearsal_counts_follow_the_fraction_after_decontamination(tmp_path, easy_tasks):
    task = Task.from_dict({"name": "senti", **easy_tasks["senti"]})
    train = task.load("train")
    banned = tmp_path / "banned.tsv"  # the first 20 training sentences, as another task's test split
    banned.write_text("label\tsentence\n" + "".join(f"0\t{t}\n" for t in train.texts[:20]))
    other = {"name": "other", "files": {"test": str(banned)}, "num_labels": 2}
    n_left = sum(t not in set(train.texts[:20]) for t in train.texts)
    cfg = FineTuneConfig(task="sst2", rehearsal={"fraction": 0.5}, exclude=[{"task": other, "split": "test"}])
    got = rehearsal_split(task, cfg)
    assert len(got) == round(0.5 * n_left)
    assert not set(got.texts) & set(train.texts[:20])
    again = rehearsal_split(task, cfg)
    assert got.texts == again.texts  # seeded
    other_seed = rehearsal_split(task, FineTuneConfig(**{**cfg.__dict__, "seed": 7}))
    assert other_seed.texts != got.texts


def test_rehearsal_of_a_task_the_parent_has_no_head_for_fails(tmp_path, tiny_bert_dir, easy_tasks):
    topic = {"name": "b", "type": "finetune", "task": "topic", "config": {"rehearsal": {"tasks": ["nope"]}}}
    spec = load_spec(make_spec(tmp_path / "s.yaml", tiny_bert_dir, easy_tasks, [SENTI, topic]))
    res = run_chain(spec, tmp_path / "out", log=lambda *_: None)
    assert res["stages"][1]["status"] == "failed"
    assert "carries no head for ['nope']" in res["stages"][1]["reason"]


def _encoder(artifact: str) -> dict:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(Path(artifact) / "model.safetensors")).items() if k.startswith("bert.")
            and "embeddings" not in k}  # embeddings: frozen below, to compare only what trains


def _distance(x: dict, y: dict) -> float:
    return sum(float(((x[k] - y[k]) ** 2).sum()) for k in x) ** 0.5


def test_l2sp_weight_zero_is_plain_training_and_a_huge_weight_pins_the_encoder(tmp_path, tiny_bert_dir,
                                                                              easy_tasks):
    base = {"freeze": ["embeddings"]}
    a, plain = _chain(tmp_path, tiny_bert_dir, easy_tasks, base, "plain")
    _, zero = _chain(tmp_path, tiny_bert_dir, easy_tasks, {**base, "l2sp": {"weight": 0.0}}, "zero")
    _, huge = _chain(tmp_path, tiny_bert_dir, easy_tasks, {**base, "l2sp": {"weight": 1.0e4}}, "huge")
    start = _encoder(a["artifact"])
    e_plain, e_zero, e_huge = (_encoder(s["artifact"]) for s in (plain, zero, huge))
    moved = _distance(start, e_plain)
    assert moved > 0.5  # the plain stage does move the encoder
    assert all(torch.equal(e_plain[k], e_zero[k]) for k in e_plain)  # + 0 * penalty changes no bit
    assert zero["train"]["l2sp"]["encoder_distance"] == pytest.approx(moved, rel=1e-4)
    assert _distance(start, e_huge) < 0.25 * moved, (_distance(start, e_huge), moved)
    assert huge["train"]["l2sp"]["encoder_distance"] == pytest.approx(_distance(start, e_huge), rel=1e-3)
    assert huge["accuracy_by_task"]["senti"] >= plain["accuracy_by_task"]["senti"]


def test_ewc_weighs_the_pull_by_the_parents_fisher(tmp_path, tiny_bert_dir, easy_tasks):
    from chain.regularize import Anchor

    base = {"freeze": ["embeddings"]}
    a, plain = _chain(tmp_path, tiny_bert_dir, easy_tasks, base, "plain")
    _, ewc = _chain(tmp_path, tiny_bert_dir, easy_tasks, {**base, "ewc": {"weight": 1.0e9, "samples": 32}}, "ewc")
    start = _encoder(a["artifact"])
    moved, held = _distance(start, _encoder(plain["artifact"])), _distance(start, _encoder(ewc["artifact"]))
    assert held < 0.5 * moved, (held, moved)
    assert ewc["train"]["ewc"]["encoder_distance"] == pytest.approx(held, rel=1e-3)
    # the penalty is the Fisher-weighted squared distance
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    anchor = Anchor([(p, torch.zeros(2))], [torch.tensor([3.0, 0.5])])
    assert anchor.penalty().item() == pytest.approx(3 * 1 + 0.5 * 4) and anchor.distance() == pytest.approx(5 ** 0.5)


BAD = [({"rehearsal": {"fraction": 0}}, "rehearsal.fraction must be in (0, 1]"),
       ({"rehearsal": {"tasks": "all"}}, "rehearsal.tasks must be 'auto'"),
       ({"rehearsal": {"fraction": 0.1, "share": 2}}, "unknown field(s) ['share']"),
       ({"l2sp": {"weight": -1}}, "l2sp.weight must be a finite number >= 0"),
       ({"l2sp": {"weight": 0.1}, "lora": {"r": 4}}, "lora` already keeps the base weights fixed"),
       ({"ewc": {"samples": 0}}, "ewc.samples must be a positive integer"),
       ({"ewc": {"weight": 1}, "l2sp": {"weight": 1}}, "choose one")]


@pytest.mark.parametrize("config,message", BAD, ids=[m for _, m in BAD])
def test_bad_forgetting_options_exit_2_in_one_line(tmp_path, tiny_bert_dir, easy_tasks, config, message):
    topic = {"name": "b", "type": "finetune", "task": "topic", "config": config}
    spec = make_spec(tmp_path / "s.yaml", tiny_bert_dir, easy_tasks, [SENTI, topic])
    p = subprocess.run([sys.executable, "-m", "chain", "validate", str(spec)], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stages[1] (b).config") and message in lines[0], lines


def test_spec_keys_parse_into_typed_settings(tmp_path, tiny_bert_dir, easy_tasks):
    topic = {"name": "b", "type": "finetune", "task": "topic",
             "config": {"rehearsal": {"fraction": 0.2, "tasks": ["senti"]}, "l2sp": {"weight": "1e-3"}}}
    spec = load_spec(make_spec(tmp_path / "s.yaml", tiny_bert_dir, easy_tasks, [SENTI, topic]))
    cfg = spec.stages[1].config
    assert (cfg.rehearsal.fraction, cfg.rehearsal.tasks, cfg.l2sp.weight) == (0.2, ["senti"], 1e-3)


def test_multihead_loss_is_each_examples_ce_under_its_own_head(tiny_bert_dir):
    import copy

    import torch.nn.functional as F
    from transformers import AutoModelForSequenceClassification

    from chain.heads import head_state, set_head_
    from chain.multihead import MultiHead

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3,
                                                               ignore_mismatched_sizes=True).eval()
    other = {"classifier.weight": torch.randn(2, 64), "classifier.bias": torch.randn(2)}
    mh = MultiHead(copy.deepcopy(model), "topic", {"senti": other}).eval()
    ids = torch.randint(1000, 2000, (5, 7))
    mask = torch.ones_like(ids)
    task_ids, labels = torch.tensor([0, 1, 1, 0, 1]), torch.tensor([2, 1, 0, 0, 1])
    out = mh(input_ids=ids, attention_mask=mask, task_ids=task_ids, labels=labels)
    senti = copy.deepcopy(model)
    set_head_(senti, other, num_labels=2)
    ref = torch.cat([F.cross_entropy(m(input_ids=ids[i], attention_mask=mask[i]).logits, labels[i], reduction="none")
                     for m, i in ((model, task_ids == 0), (senti, task_ids == 1))]).sum() / 5
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert out.logits.shape == (5, 3) and torch.isinf(out.logits[task_ids == 1, 2]).all()
    out.loss.backward()  # both heads receive gradient from their own rows
    assert mh.extra["senti"].classifier__weight.grad.abs().sum() > 0
    assert mh.model.classifier.weight.grad.abs().sum() > 0
    states = mh.head_states()
    assert torch.equal(states["senti"]["classifier.weight"], other["classifier.weight"])
    assert torch.equal(states["topic"]["classifier.weight"], head_state(model)["classifier.weight"])


def test_forgetting_summary_and_goal_check():
    from chain.forgetting import dev_pick, markdown, parse_method, summarize

    def row(seed, subj_own, subj_final, final):
        return {"seed": seed, "stages": ["subj", "sst2"], "own_task": {"subj": "subj", "sst2": "sst2"},
                "test": {"subj": {"subj": subj_own}, "sst2": {"subj": subj_final, "sst2": final}}}

    runs = {"none": [row(1, 0.92, 0.60, 0.88), row(2, 0.92, 0.50, 0.89)],
            "rehearsal": [row(1, 0.92, 0.915, 0.885), row(2, 0.92, 0.90, 0.88)]}
    s = summarize(runs)["methods"]
    assert s["none"]["drop_points"]["subj"]["mean"] == pytest.approx(37.0)
    assert s["rehearsal"]["drop_points"]["subj"]["mean"] == pytest.approx(1.25)  # (0.5 + 2.0) / 2
    assert s["rehearsal"]["drop_points"]["subj"]["worst"] == pytest.approx(2.0)
    assert s["rehearsal"]["final_vs_baseline_points"] == pytest.approx(-0.25)
    assert s["rehearsal"]["goal"] == {"mean_drop_ok": False, "worst_drop_ok": True, "final_ok": True,
                                      "all_ok": False}
    assert s["none"]["matrix"]["sst2"]["subj"]["mean"] == pytest.approx(0.55)
    # the pick reads the final artifact's mean over tasks: rehearsal (0.895) over none (0.7175)
    dev = summarize({m: [{**r, "dev": r["test"]} for r in rows] for m, rows in runs.items()}, "dev")["methods"]
    pick = dev_pick(dev)
    assert pick["method"] == "rehearsal" and pick["scores"]["none"] == pytest.approx(0.7175)
    assert "Picked on dev" in markdown({**summarize(runs), "dev_pick": pick}) and "Picked" not in markdown(summarize(runs))
    assert parse_method("rehearsal:fraction=0.1+l2sp:weight=0.01")[1] == {
        "rehearsal": {"fraction": 0.1, "tasks": "auto"}, "l2sp": {"weight": 0.01}}
    with pytest.raises(Exception, match="'fisher' is not 'none'"):
        parse_method("fisher:weight=1")


def test_each_method_replaces_the_specs_own_forgetting_control():
    """The example sets rehearsal on its later stages; 'none' must still mean none."""
    from chain.forgetting import parse_method, variant
    from chain.spec import load_spec

    spec = load_spec(REPO / "examples" / "sentiment_chain.yaml", check=False)
    assert spec.stages[1].config.rehearsal is not None  # the example's default
    none = variant(spec, "sst5", 1, parse_method("none")[1])
    ewc = variant(spec, "sst5", 1, parse_method("ewc:weight=10")[1])
    for st in none.stages[1:]:
        assert st.config.rehearsal is None and st.config.ewc is None and st.config.l2sp is None
    assert all(st.config.rehearsal is None and st.config.ewc.weight == 10 for st in ewc.stages[1:])
    assert none.stages[0].config.rehearsal is None and none.stages[0].config.seed == spec.stages[0].config.seed


def test_lora_merge_method_drops_freeze_and_takes_its_own_learning_rate():
    from chain.forgetting import parse_method, variant
    from chain.spec import load_spec

    spec = load_spec(REPO / "examples" / "sentiment_chain.yaml", check=False)
    assert spec.stages[1].config.freeze == ["embeddings"]  # lora refuses freeze: the method must clear it
    opts = parse_method("lora:merge=ties,density=0.7,r=16+set:learning_rate=5e-4")[1]
    assert opts["lora"]["r"] == 16 and opts["set"] == {"learning_rate": 5e-4}
    v = variant(spec, "sst5", 3, opts, overrides={"learning_rate": 1e-4, "epochs": 1.0})
    first, later = v.stages[0].config, v.stages[1:]
    assert first.lora is None and first.freeze == ["embeddings"]  # before --stage: untouched
    for st in later:
        c = st.config
        assert (c.lora.merge, c.lora.density, c.lora.r, c.freeze) == ("ties", 0.7, 16, [])
        assert c.learning_rate == 5e-4 and c.epochs == 1.0 and c.rehearsal is None and c.seed == 3
    with pytest.raises(Exception, match="lora.merge must be one of"):
        parse_method("lora:merge=mean")

"""bench --search: the pruning ladder walked on dev, cached, bounded in time."""
import json

import pytest

from bench.__main__ import build_config, parser
from bench.search import BRANCH_ROOT, SearchConfig, _branch, level_stages, run_search
from bench.spec import bench_raw
from chain.errors import SpecError


def test_level_stages_rename_every_branch_stage_and_set_the_level(tmp_path):
    a = parser().parse_args(["--quick", "--no-peers", "--output", str(tmp_path)])
    raw, _ = bench_raw(build_config(a))
    template = _branch(raw["stages"])
    assert template[0]["name"] == BRANCH_ROOT and {"recovered", "recovered-onnx-int8"} <= {s["name"] for s in template}
    default = {"heads": 0.5, "ffn": 0.6}
    assert level_stages(template, default, default) == template  # the default level keeps its names
    mild = level_stages(template, {"heads": 0.25, "ffn": 0.4}, default)
    names = [s["name"] for s in mild]
    assert names[0] == "pruned-f40-h25" and "recovered-f40-h25-onnx-int8" in names
    assert mild[0]["config"]["heads"] == 0.25 and mild[0]["config"]["importance"] == "taylor"
    assert mild[0]["parent"] == "finetune"  # the reference is not renamed
    assert all(s["parent"] in names + ["finetune"] for s in mild)
    assert mild[1]["config"]["distill"] == {"teacher": "finetune"}
    deep = level_stages(template, {"heads": 0.5, "ffn": 0.6, "layers": 1 / 3}, default)
    assert deep[0]["name"] == "pruned-f60-h50-l33" and deep[0]["config"]["layers"] == 1 / 3


def test_the_ladder_is_ordered_by_the_flops_it_keeps():
    from bench.search import LADDER

    def kept(lv):  # per layer: 4h^2 attention projections, 8h^2 FFN (MiniLM: 12 heads)
        return (4 * (1 - round(12 * lv["heads"]) / 12) + 8 * (1 - lv["ffn"])) * (1 - lv.get("layers", 0))
    costs = [kept(lv) for lv in LADDER]
    assert costs == sorted(costs, reverse=True) and len(set(costs)) == len(costs)
    assert any(lv.get("layers") for lv in LADDER)


def test_search_walks_levels_on_dev_and_stops_at_the_time_budget(tiny_bert_dir, small_task_files, tmp_path):
    a = parser().parse_args(["--model", str(tiny_bert_dir), "--num-labels", "2", "--train",
                             str(small_task_files["train"]), "--dev", str(small_task_files["dev"]),
                             "--test", str(small_task_files["test"]), "--output", str(tmp_path / "out"),
                             "--quick", "--threads", "1", "--no-peers"])
    cfg = build_config(a)
    levels = [{"heads": 0.25, "ffn": 0.25}, {"heads": 0.5, "ffn": 0.5}]
    search = SearchConfig(max_drop=100.0, time_budget_s=1e-6, levels=levels)  # the 2nd level never starts
    spec, record = run_search(cfg, search, log=lambda *_: None)
    first, second = record["trials"]
    assert first["status"] == "within budget" and first["stage"] == "recovered-f25-h25"
    assert 0 <= first["dev_accuracy"] <= 1 and first["dev_drop_points"] == pytest.approx(
        100 * (first["reference_dev_accuracy"] - first["dev_accuracy"]), abs=0.01)
    assert second["status"] == "not tried" and "--time-budget" in second["reason"]
    names = [s.name for s in spec.stages]
    assert "recovered-f25-h25-onnx-int8" in names and BRANCH_ROOT not in names  # default level not reached
    assert "onnx-int8" in names  # the rest of the default chain is timed as usual
    # a level over budget is reported and not exported; re-running reuses the cache
    strict = SearchConfig(max_drop=-0.0, time_budget_s=3600, levels=levels[:1])
    spec2, rec2 = run_search(cfg, strict, log=lambda *_: None)
    t = rec2["trials"][0]
    if t["status"] == "over budget":
        assert "recovered-f25-h25-onnx" not in [s.name for s in spec2.stages]
    else:  # the recovered tiny model happened to match the reference on 32 dev sentences
        assert t["dev_drop_points"] <= 0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert all(s["cached"] for s in saved["stages"])  # the second walk retrained nothing


def test_search_refuses_a_user_spec(tmp_path):
    a = parser().parse_args(["--spec", "examples/compress_chain.yaml", "--output", str(tmp_path)])
    with pytest.raises(SpecError, match="--search walks the default chain"):
        run_search(build_config(a), SearchConfig(), log=lambda *_: None)
    with pytest.raises(SpecError, match="--max-drop"):
        SearchConfig(max_drop=float("nan"))


@pytest.mark.slow
def test_bench_search_end_to_end_times_the_kept_levels(tiny_bert_dir, small_task_files, tmp_path):
    from bench.run import run_bench

    a = parser().parse_args(["--model", str(tiny_bert_dir), "--num-labels", "2", "--train",
                             str(small_task_files["train"]), "--dev", str(small_task_files["dev"]),
                             "--test", str(small_task_files["test"]), "--output", str(tmp_path / "out"),
                             "--quick", "--threads", "1", "--no-peers"])
    search = SearchConfig(max_drop=100.0, levels=[{"heads": 0.25, "ffn": 0.25}])
    res = run_bench(build_config(a), log=lambda *_: None, quiet=True, search=search)
    rows = {r["name"]: r for r in res["stages"]}
    assert rows["recovered-f25-h25-onnx-int8"]["throughput"]["samples_per_s"] > 0
    assert res["search"]["trials"][0]["status"] == "within budget"
    assert "## Search" in (tmp_path / "out" / "report.md").read_text()


def test_without_dev_a_tenth_of_train_is_the_dev_split(tiny_bert_dir, small_task_files, tmp_path):
    """The pick, gates and search decide on dev: with --train/--test only, dev is carved from
    train (and left out of it), never the test file; under --finetuned the model has seen its
    train file, so nothing is carved."""
    from chain.spec import parse_spec

    args = ["--train", str(small_task_files["train"]), "--test", str(small_task_files["test"]), "--num-labels", "2",
            "--quick", "--no-peers", "--output", str(tmp_path)]
    raw, base = bench_raw(build_config(parser().parse_args(args)))
    task = parse_spec(raw, base).tasks["custom"]
    train, dev, test = (task.load(s) for s in ("train", "dev", "test"))
    assert len(dev) == round(0.1 * 96) and len(train) == 96 - len(dev) and len(test) == 48
    assert not set(dev.texts) & set(train.texts) and not set(dev.texts) & set(test.texts)
    raw, _ = bench_raw(build_config(parser().parse_args(args + ["--finetuned", "--model", str(tiny_bert_dir)])))
    assert "holdout" not in raw["tasks"]["custom"]


def test_a_level_the_architecture_refuses_is_passed_over(tmp_path, monkeypatch):
    """Qwen2 with 2 KV groups cannot drop a quarter of its heads: that level is a row saying
    why, and the walk goes on to the next (it once stopped the whole search, exit 2)."""
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    import bench.search as search_mod

    cfg = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=100, num_labels=2, pad_token_id=0)
    Qwen2ForSequenceClassification(cfg).save_pretrained(tmp_path / "qwen")
    a = parser().parse_args(["--model", str(tmp_path / "qwen"), "--quick", "--no-peers",
                             "--output", str(tmp_path / "out")])
    plan = search_mod.plan_of(build_config(a))
    assert "KV groups" in search_mod.refusal(plan, {"heads": 0.25, "ffn": 0.4})
    assert search_mod.refusal(plan, {"heads": 0.5, "ffn": 0.6}) == ""
    probed = []

    def fake_probe(plan, level, output, threads, log=print, epochs=0):
        probed.append(level)
        acc = {plan.ref: 0.9, "recovered": 0.9}
        return {"stage": "recovered", "accuracy": acc, "reason": "", "artifacts": {}}
    monkeypatch.setattr(search_mod, "probe", fake_probe)
    levels = [{"heads": 0.25, "ffn": 0.4}, {"heads": 0.5, "ffn": 0.6}, {"heads": 0.5, "ffn": 0.75}]
    search = SearchConfig(max_drop=1.0, time_budget_s=1e-6, levels=levels)
    trials, kept = search_mod._walk(build_config(a), search, plan, log=lambda *_: None)
    assert [t["status"] for t in trials] == ["not for this model", "within budget", "not tried"]
    assert "KV groups" in trials[0]["reason"]
    assert probed == [levels[1]]  # the first level that can run always runs, budget or not
    assert kept and kept[0]["name"] == BRANCH_ROOT


def test_an_over_budget_level_rules_out_only_the_levels_at_least_as_strong(tmp_path, monkeypatch):
    """One layer dropped over budget must not stop the walk before FFN 0.75 (another dimension,
    fewer FLOPs); two layers dropped is at least as strong in every dimension and is not tried."""
    import bench.search as search_mod

    a = parser().parse_args(["--quick", "--no-peers", "--output", str(tmp_path / "out")])
    plan = search_mod.plan_of(build_config(a))
    layer, ffn, layers2 = ({"heads": 0.5, "ffn": 0.6, "layers": 1 / 6}, {"heads": 0.5, "ffn": 0.75},
                           {"heads": 0.5, "ffn": 0.6, "layers": 1 / 3})
    probed = []

    def fake_probe(plan, level, output, threads, log=print, epochs=0):
        probed.append(level)
        name = "recovered" + search_mod._suffix(level)
        return {"stage": name, "accuracy": {plan.ref: 0.9, name: 0.85 if level.get("layers") else 0.895},
                "reason": "", "artifacts": {}}
    monkeypatch.setattr(search_mod, "probe", fake_probe)
    search = SearchConfig(max_drop=1.0, time_budget_s=3600, levels=[layer, ffn, layers2], retry_epochs=0)
    trials, kept = search_mod._walk(build_config(a), search, plan, log=lambda *_: None)
    assert [t["status"] for t in trials] == ["over budget", "within budget", "not tried"]
    assert probed == [layer, ffn]
    assert "over budget" in trials[2]["reason"] and "layers 0.167" in trials[2]["reason"]
    names = [s["name"] for s in kept]
    assert "recovered-f75-h50-onnx-int8" in names  # the kept level is exported and timed
    assert not any(n.startswith("recovered-f60-h50-l17-") for n in names)  # the over-budget one is not
    assert search_mod.dominates(layers2, layer) and not search_mod.dominates(ffn, layer)


def test_level_stages_with_epochs_retrain_only_the_recovery(tmp_path):
    a = parser().parse_args(["--quick", "--no-peers", "--output", str(tmp_path)])
    template = _branch(bench_raw(build_config(a))[0]["stages"])
    default = {"heads": 0.5, "ffn": 0.6}
    level = {"heads": 0.5, "ffn": 0.6, "layers": 1 / 6}
    plain, longer = level_stages(template, level, default), level_stages(template, level, default, epochs=4)
    assert longer[0] == plain[0]  # the pruned model is shared (and cached)
    assert longer[1]["name"] == "recovered-f60-h50-l17-e4" and longer[1]["parent"] == "pruned-f60-h50-l17"
    assert longer[1]["config"]["epochs"] == 4 and longer[1]["config"]["distill"] == {"teacher": "finetune"}
    assert plain[1]["config"].get("epochs") != 4  # the template is not changed
    assert [s["name"] for s in longer[2:]] == [s["name"].replace("-l17", "-l17-e4", 1) for s in plain[2:]]
    assert level_stages(template, default, default, epochs=2.5)[1]["name"] == "recovered-e2.5"
    import bench.search as search_mod

    assert search_mod.plan_of(build_config(a)).recovery_epochs == 1.0  # --quick: every fine-tune 1 epoch
    full = parser().parse_args(["--output", str(tmp_path)])
    assert search_mod.plan_of(build_config(full)).recovery_epochs == 2.0
    for bad in (-1, float("inf"), True):
        with pytest.raises(SpecError, match="retry-epochs"):
            SearchConfig(retry_epochs=bad)


def _retry_walk(tmp_path, monkeypatch, drops: dict, levels, delay: float = 0.0, **search_kw):
    """The walk with a fake probe that takes ``delay`` s: ``drops[(level index, epochs)]`` dev points lost."""
    import time

    import bench.search as search_mod

    a = parser().parse_args(["--quick", "--no-peers", "--output", str(tmp_path / "out")])
    plan = search_mod.plan_of(build_config(a))
    probed = []

    def fake_probe(plan, level, output, threads, log=print, epochs=0):
        probed.append((levels.index(level), epochs))
        time.sleep(delay)
        name = "recovered" + search_mod._suffix(level) + (f"-e{epochs:g}" if epochs else "")
        drop = drops[(levels.index(level), epochs)]
        return {"stage": name, "accuracy": {plan.ref: 0.9, name: 0.9 - drop / 100}, "reason": "", "artifacts": {}}
    monkeypatch.setattr(search_mod, "probe", fake_probe)
    search = SearchConfig(max_drop=1.0, levels=levels, **search_kw)
    trials, kept = search_mod._walk(build_config(a), search, plan, log=lambda *_: None)
    return trials, [s["name"] for s in kept], probed


LAYER, LAYERS2 = {"heads": 0.5, "ffn": 0.6, "layers": 1 / 6}, {"heads": 0.5, "ffn": 0.6, "layers": 1 / 3}


@pytest.mark.parametrize("retry_drop,statuses", [(0.5, ["over budget", "within budget", "within budget"]),
                                                 (1.5, ["over budget", "over budget", "not tried"])])
def test_an_over_budget_level_is_retried_with_a_longer_recovery(tmp_path, monkeypatch, retry_drop, statuses):
    """Within budget on the retry, the level is exported from the longer recovery and the
    stronger levels stay in play; over budget again, it rules them out as before."""
    import bench.search as search_mod

    trials, names, probed = _retry_walk(tmp_path, monkeypatch, {(0, 0): 1.5, (0, 4.0): retry_drop, (1, 0): 0.8},
                                        [LAYER, LAYERS2], time_budget_s=3600)
    assert [t["status"] for t in trials] == statuses
    assert trials[1]["recovery"] == "4 epochs" and trials[1]["stage"] == "recovered-f60-h50-l17-e4"
    assert names.count("pruned-f60-h50-l17") == 1 and "recovered-f60-h50-l17" in names  # reported
    assert ("recovered-f60-h50-l17-e4-onnx-int8" in names) == (retry_drop < 1)
    assert not any(n.startswith("recovered-f60-h50-l17-onnx") for n in names)  # over budget: not exported
    assert probed == ([(0, 0), (0, 4.0), (1, 0)] if retry_drop < 1 else [(0, 0), (0, 4.0)])
    md = "\n".join(search_mod.markdown({"max_drop_points": 1.0, "time_budget_s": 3600, "wall_time_s": 1,
                                        "trials": trials}))
    assert "layers 0.167 (4 epochs)" in md


def test_no_retry_and_no_level_starts_that_would_not_fit_the_time_budget(tmp_path, monkeypatch):
    # retry off: the over-budget level rules out the stronger one, nothing else runs
    trials, _, probed = _retry_walk(tmp_path, monkeypatch, {(0, 0): 1.5}, [LAYER, LAYERS2], retry_epochs=0)
    assert [t["status"] for t in trials] == ["over budget", "not tried"] and probed == [(0, 0)]
    # a 0.1-s trial in a 0.3-s budget: its retry, judged 4x as long (--quick recovers 1 epoch), is not started
    trials, _, probed = _retry_walk(tmp_path, monkeypatch, {(0, 0): 1.5}, [LAYER, LAYERS2], delay=0.1,
                                    time_budget_s=0.3)
    assert probed == [(0, 0)] and trials[1]["status"] == "not tried" and trials[1]["recovery"] == "4 epochs"
    assert "the longer recovery would take" in trials[1]["reason"]
    # within budget, the next level is judged by the last trial's time: 0.2 s fits, then 0.2 more does not
    trials, _, probed = _retry_walk(tmp_path, monkeypatch, {(0, 0): 0.5, (1, 0): 0.5, (2, 0): 0.5},
                                    [LAYER, LAYERS2, {"heads": 0.67, "ffn": 0.8}], delay=0.2, time_budget_s=0.5)
    assert probed == [(0, 0), (1, 0)] and trials[2]["status"] == "not tried"
    assert "the last trial took" in trials[2]["reason"]


def test_retry_epochs_and_time_budget_are_search_flags(tmp_path, capsys):
    from bench.__main__ import main

    for flag in ("--retry-epochs", "--time-budget"):
        assert main([flag, "1", "--output", str(tmp_path / "o")]) == 2
        assert "--search" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser().parse_args(["--search", "--retry-epochs", "-1"])
    assert main(["--search", "--ray", "local", "--retry-epochs", "4", "--output", str(tmp_path / "o")]) == 2
    assert "--ray" in capsys.readouterr().err

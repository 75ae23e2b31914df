import pytest
import torch
from safetensors.torch import load_file, save_file

from chain.artifact import Artifact
from chain.errors import SpecError
from chain.finetune import FineTune, FineTuneConfig, freeze_
from chain.finetune_config import train_precision
from tests.stage_runner import run_stages
from chain.task import Task


def _task(files) -> dict:
    return Task("small", {k: str(v) for k, v in files.items()}, 2).to_dict()


def test_finetune_tiny_writes_loadable_safetensors(tiny_bert, small_task_files, tmp_path):
    from transformers import AutoModelForSequenceClassification

    cfg = FineTuneConfig(task=_task(small_task_files), epochs=1, batch_size=16, show_progress=False,
                         freeze=["embeddings"])
    [res] = run_stages(Artifact.load(tiny_bert), [FineTune(cfg)], tmp_path / "out")
    assert res.status == "ok", res.reason
    d = res.artifact.path
    assert (d / "model.safetensors").is_file() and not list(d.glob("*.bin")) and not (d / "_trainer").exists()
    m = res.artifact.manifest
    assert m["train"]["examples"] == 96 and m["train"]["dev_examples"] == 32
    assert m["config"]["epochs"] == 1 and m["task"]["name"] == "small"
    assert m["train"]["precision"] == train_precision("auto")  # what this machine trained in
    model = AutoModelForSequenceClassification.from_pretrained(d)
    before = load_file(str(tiny_bert / "model.safetensors"))
    after = load_file(str(d / "model.safetensors"))
    emb = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(before[emb], after[emb])  # frozen
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])  # trained
    assert model.config.num_labels == 2


def test_nan_loss_stops_stage_and_publishes_nothing(tiny_bert, small_task_files, tmp_path):
    path = tiny_bert / "model.safetensors"
    state = load_file(str(path))
    # in the encoder: a new task gets a freshly initialised head, so a NaN head would be replaced
    state["bert.pooler.dense.weight"] = torch.full_like(state["bert.pooler.dense.weight"], float("nan"))
    save_file(state, str(path), metadata={"format": "pt"})
    cfg = FineTuneConfig(task=_task(small_task_files), epochs=1, batch_size=16, show_progress=False)
    [res] = run_stages(Artifact.load(tiny_bert), [FineTune(cfg)], tmp_path / "out")
    # a diverged stage is a gate failure (rolled back), recorded so a resume does not diverge again
    assert res.status == "rolled_back" and "training diverged" in res.reason and "nan" in res.reason.lower()
    arts = tmp_path / "out" / "artifacts"
    assert [p.name for p in arts.iterdir() if not p.name.startswith(".")] == [f"finetune-{res.row['key']}.failed.json"]


def test_dev_holdout_when_task_has_no_dev(tiny_bert, small_task_files):
    from chain.finetune import train_dev

    files = {"train": small_task_files["train"], "test": small_task_files["test"]}
    train, dev = train_dev(Task.from_dict(_task(files)), FineTuneConfig(task=_task(files)))
    assert len(train) + len(dev) == 96 and len(dev) == 9 and not set(train.texts) & set(dev.texts)


@pytest.mark.parametrize("kw,msg", [({"epochs": 0}, "epochs"), ({"learning_rate": "fast"}, "learning_rate"),
                                    ({"freeze": ["decoder"]}, "freeze"), ({"precision": "fp16"}, "precision")])
def test_config_validation(kw, msg):
    with pytest.raises(SpecError, match=msg):
        FineTuneConfig(**kw)


def test_freeze_layers(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    m = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    n = freeze_(m, ["layers:1"])
    assert n == sum(p.numel() for p in m.bert.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in m.bert.encoder.layer[1].parameters())
    with pytest.raises(SpecError, match="has 2 layers"):
        freeze_(m, ["layers:3"])


@pytest.mark.parametrize("flags,want", [(["avx2", "avx512f", "avx512_bf16"], "bf16"), (["avx2", "amx_bf16"], "bf16"),
                                        (["avx2", "avx512f", "avx512_vnni"], "fp32"), ([], "fp32")])
def test_auto_precision_is_bf16_only_with_bf16_arithmetic_and_keyed_as_resolved(monkeypatch, tmp_path, flags, want):
    """bf16 autocast where the CPU has AVX512_BF16 or AMX (emulated bf16 is slower than fp32);
    the cache key holds what ``auto`` resolved to, so a cache from a machine without bf16 is
    not reused on one with it, and ``auto`` there is the same stage as an explicit ``bf16``."""
    from types import SimpleNamespace

    import chain.environment as env
    from chain.cache import stage_key
    from chain.executor import ChainRun

    monkeypatch.setattr(env, "cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_precision("auto") == want
    assert (train_precision("fp32"), train_precision("bf16")) == ("fp32", "bf16")
    keyed = ChainRun._keyed(SimpleNamespace(art_root=tmp_path), FineTune, FineTuneConfig())
    assert keyed.precision == want
    key = lambda c: stage_key("p", "finetune", c, "fp", FineTune.not_in_key)  # noqa: E731
    assert key(keyed) == key(FineTuneConfig(precision=want))
    assert key(keyed) != key(FineTuneConfig(precision={"bf16": "fp32", "fp32": "bf16"}[want]))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_explicit_precision_trains_and_is_recorded(tiny_bert, small_task_files, tmp_path, precision):
    """bf16 is autocast: the saved weights stay fp32 whatever the precision trained in."""
    cfg = FineTuneConfig(task=_task(small_task_files), epochs=1, batch_size=16, show_progress=False,
                         precision=precision)
    [res] = run_stages(Artifact.load(tiny_bert), [FineTune(cfg)], tmp_path / "out")
    assert res.status == "ok", res.reason
    assert res.artifact.manifest["train"]["precision"] == precision
    weights = load_file(str(res.artifact.path / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}

"""Structured pruning on a tiny BERT: identity when nothing is pruned, consistent shapes after."""
import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from chain.errors import ModelError, SpecError
from compress.prune import PruneConfig, head_scores_l1, prune_


def _model(seed=0, layers=3):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=120, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=128, num_labels=3)
    return BertForSequenceClassification(cfg).eval()


def _inputs():
    ids = torch.randint(0, 120, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_nothing_pruned_is_identity():
    m, x = _model(), _inputs()
    before = m(**x).logits
    report = prune_(m, PruneConfig())
    assert torch.equal(m(**x).logits, before)
    assert report["heads"] == {} and set(report["ffn_kept"].values()) == {128}


@pytest.mark.parametrize("importance", ["l1", "taylor"])
def test_shapes_and_save_load_roundtrip(tmp_path, importance):
    m, x = _model(), _inputs()
    batches = lambda: iter([{**x, "labels": torch.tensor([0, 1, 2])}] * 2)  # noqa: E731
    report = prune_(m, PruneConfig(heads=0.5, ffn=0.25, importance=importance), batches=batches)
    for L in m.bert.encoder.layer:
        assert L.attention.self.num_attention_heads == 2
        assert L.attention.self.query.weight.shape == (32, 64) and L.attention.output.dense.weight.shape == (64, 32)
        assert L.intermediate.dense.weight.shape == (96, 64) and L.output.dense.weight.shape == (64, 96)
    assert report["params"] == sum(p.numel() for p in m.parameters())
    y = m(**x).logits
    m.save_pretrained(tmp_path)
    m2 = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(m2(**x).logits, y)


def test_l1_removes_the_weakest_head():
    m = _model()
    att = m.bert.encoder.layer[0].attention
    with torch.no_grad():  # make head 2 of layer 0 nearly zero: it must be the one removed
        for lin in (att.self.query, att.self.key, att.self.value):
            lin.weight[32:48] *= 1e-3
        att.output.dense.weight[:, 32:48] *= 1e-3
    assert int(head_scores_l1(m, 0).argmin()) == 2
    prune_(m, PruneConfig(heads=0.25))
    assert att.pruned_heads == {2} and m.config.pruned_heads[0] == [2]


def test_drop_layers_and_overrides(tmp_path):
    m, x = _model(layers=3), _inputs()
    prune_(m, PruneConfig(heads=0.5, drop_layers=[1], overrides={"bert.encoder.layer.0": {"heads": 0.0}}))
    assert m.config.num_hidden_layers == 2 and len(m.bert.encoder.layer) == 2
    assert m.bert.encoder.layer[0].attention.self.num_attention_heads == 4
    assert m.bert.encoder.layer[1].attention.self.num_attention_heads == 2
    y = m(**x).logits
    m.save_pretrained(tmp_path)
    assert torch.equal(AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()(**x).logits, y)


def test_layers_fraction_drops_the_top_layers_with_their_pruned_heads(tmp_path):
    m, x = _model(layers=6), _inputs()
    keep = [m.bert.encoder.layer[i] for i in (0, 2, 3)]
    report = prune_(m, PruneConfig(heads=0.5, layers=1 / 3, drop_layers=[1]))
    assert report["dropped_layers"] == [1, 4, 5]  # the index given and the top two of six
    assert m.config.num_hidden_layers == 3 and list(m.bert.encoder.layer) == keep
    assert sorted(m.config.pruned_heads) == [0, 1, 2]  # re-keyed by the layers' new positions
    y = m(**x).logits
    m.save_pretrained(tmp_path)
    assert torch.equal(AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()(**x).logits, y)
    one = _model(layers=2)
    assert prune_(one, PruneConfig(layers=0.9))["dropped_layers"] == [1]  # one layer always stays


@pytest.mark.parametrize("kw,msg", [({"heads": 1.0}, "fraction"), ({"layers": 1.0}, "prune.layers"), ({"importance": "random"}, "importance"),
                                    ({"overrides": {"x": {"bits": 4}}}, "unknown keys")])
def test_config_errors(kw, msg):
    with pytest.raises(SpecError, match=msg):
        PruneConfig(**kw)


def test_taylor_needs_data_and_non_bert_refused():
    with pytest.raises(SpecError, match="needs task batches"):
        prune_(_model(), PruneConfig(heads=0.5, importance="taylor"))
    with pytest.raises(ModelError, match="not a supported model for structured pruning"):
        prune_(torch.nn.Sequential(torch.nn.Linear(2, 2)), PruneConfig(heads=0.5))
    with pytest.raises(SpecError, match="layers are 0..2"):
        prune_(_model(), PruneConfig(drop_layers=[5]))

"""Distillation in FineTune: the KL + CE loss path on tiny models; the teacher is never trained."""
import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from chain.artifact import Artifact
from chain.errors import SpecError
from chain.distill import attach_teacher_logits_, distill_trainer_cls
from chain.finetune import DistillSettings, FineTune, FineTuneConfig
from tests.stage_runner import run_stages
from chain.task import Task
from compress.prune import PruneConfig, prune_


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, num_labels=2)
    return BertForSequenceClassification(cfg).eval()


BATCH = {"input_ids": torch.randint(0, 120, (4, 9)), "attention_mask": torch.ones(4, 9, dtype=torch.long),
         "labels": torch.tensor([0, 1, 1, 0])}


def _loss(student, teacher, alpha, T, tmp_path):
    cls = distill_trainer_cls(Trainer, teacher, DistillSettings(teacher="unused", alpha=alpha, temperature=T))
    trainer = cls(model=student, args=TrainingArguments(str(tmp_path), report_to=[], use_cpu=True))
    return trainer.compute_loss(student, dict(BATCH))


def test_loss_mixes_kl_and_ce(tmp_path):
    student, teacher = _model(0), _model(1)
    with torch.no_grad():
        teacher.classifier.weight *= 100  # random tiny models agree to ~1e-5 KL; make the teacher confident
        ce = student(**BATCH).loss
        s, t = student(**BATCH).logits, teacher(**BATCH).logits
    kl = torch.nn.functional.kl_div(torch.log_softmax(s / 2, -1), torch.softmax(t / 2, -1), reduction="batchmean") * 4
    assert _loss(student, teacher, 0.0, 2.0, tmp_path).item() == pytest.approx(ce.item(), rel=1e-5)
    assert _loss(student, teacher, 1.0, 2.0, tmp_path).item() == pytest.approx(kl.item(), rel=1e-4)
    assert _loss(student, teacher, 0.5, 2.0, tmp_path).item() == pytest.approx(0.5 * (kl + ce).item(), rel=1e-4)
    assert _loss(student, _model(0), 1.0, 2.0, tmp_path).item() == pytest.approx(0.0, abs=1e-6)  # same model
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("hidden,augment", [(0.0, None), (1.0, None), (0.0, {"copies": 2}), (1.0, {"copies": 1})])
def test_pruned_student_distils_from_unpruned_teacher(tiny_bert, small_task_files, tmp_path, hidden, augment):
    """Chain shape: prune the parent, fine-tune with the unpruned parent as teacher (with the
    hidden-state term too: its dev evaluation once failed on the hidden states it returned;
    with teacher-labelled augmentation, whose rows must batch with the others either way)."""
    task = Task("small", {k: str(v) for k, v in small_task_files.items()}, 2).to_dict()
    teacher_before = load_file(str(tiny_bert / "model.safetensors"))
    student_dir = tmp_path / "pruned"
    m = BertForSequenceClassification.from_pretrained(tiny_bert)
    prune_(m, PruneConfig(heads=0.5, ffn=0.5))
    m.save_pretrained(student_dir)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (student_dir / f).write_bytes((tiny_bert / f).read_bytes())
    cfg = FineTuneConfig(task=task, epochs=1, batch_size=16, show_progress=False, head="keep",
                         distill={"teacher": str(tiny_bert), "alpha": 0.7, "temperature": 2.0, "hidden": hidden,
                                  "augment": augment})
    assert isinstance(cfg.distill, DistillSettings)
    [res] = run_stages(Artifact.load(student_dir), [FineTune(cfg)], tmp_path / "out")
    assert res.status == "ok", res.reason
    assert res.artifact.manifest["train"]["distilled_from"] == str(tiny_bert)
    assert res.artifact.manifest["config"]["distill"]["alpha"] == 0.7
    assert res.artifact.manifest["config"]["distill"]["hidden"] == hidden
    train = res.artifact.manifest["train"]
    assert train["augmented_examples"] == (train["examples"] * augment["copies"] if augment else None)
    after = load_file(str(tiny_bert / "model.safetensors"))
    assert all(torch.equal(teacher_before[k], after[k]) for k in teacher_before)  # teacher untouched
    trained = load_file(str(res.artifact.path / "model.safetensors"))
    assert trained["bert.encoder.layer.0.attention.self.query.weight"].shape == (32, 64)  # still pruned


def test_teacher_with_wrong_label_count_is_refused(tiny_bert, small_task_files, tmp_path):
    teacher = tmp_path / "teacher3"
    BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=1,
                                             num_attention_heads=4, intermediate_size=128,
                                             num_labels=3)).save_pretrained(teacher)
    task = Task("small", {k: str(v) for k, v in small_task_files.items()}, 2).to_dict()
    cfg = FineTuneConfig(task=task, epochs=1, batch_size=16, show_progress=False, distill={"teacher": str(teacher)})
    [res] = run_stages(Artifact.load(tiny_bert), [FineTune(cfg)], tmp_path / "out")
    assert res.status == "failed" and "3 outputs" in res.reason


@pytest.mark.parametrize("kw,msg", [({"teacher": ""}, "teacher"), ({"teacher": "t", "alpha": 1.5}, "alpha"),
                                    ({"teacher": "t", "temperature": 0}, "temperature")])
def test_settings_validation(kw, msg):
    with pytest.raises(SpecError, match=msg):
        DistillSettings(**kw)
    with pytest.raises(SpecError, match=msg):
        FineTuneConfig(distill=kw)


def test_carried_teacher_logits_give_the_on_the_fly_loss(tmp_path):
    """Logits computed once (length-sorted, other padding) give the loss a per-step teacher gives."""
    from transformers import BertTokenizerFast, DataCollatorWithPadding

    student, teacher = _model(0), _model(1)
    with torch.no_grad():
        teacher.classifier.weight *= 100
    lengths = [3, 9, 5, 7]
    rows = [{"input_ids": torch.randint(5, 120, (n,)).tolist(), "attention_mask": [1] * n, "labels": i % 2}
            for i, n in enumerate(lengths)]
    collator = DataCollatorWithPadding(BertTokenizerFast(vocab_file=_vocab(tmp_path)))
    seconds = attach_teacher_logits_(teacher, rows, collator, batch_size=2)  # batches of other shapes
    assert seconds >= 0 and all(len(r["teacher_logits"]) == 2 for r in rows)
    cls = distill_trainer_cls(Trainer, teacher, DistillSettings(teacher="unused", alpha=1.0, temperature=2.0))
    trainer = cls(model=student, args=TrainingArguments(str(tmp_path), report_to=[], use_cpu=True))
    with_carried = collator(rows)
    assert with_carried["teacher_logits"].shape == (4, 2)
    plain = collator([{k: v for k, v in r.items() if k != "teacher_logits"} for r in rows])
    carried_loss = trainer.compute_loss(student, dict(with_carried)).item()
    assert cls.teacher_forwards == 0
    live_loss = trainer.compute_loss(student, dict(plain)).item()
    assert cls.teacher_forwards == 1
    assert carried_loss == pytest.approx(live_loss, rel=1e-4) and carried_loss > 1e-3


def _vocab(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(115)]]))
    return str(path)


def test_training_steps_never_run_the_teacher(tiny_bert, small_task_files, tmp_path, monkeypatch):
    """Only dev evaluation scores batches with the teacher; every training batch carries its logits."""
    import chain.distill as distill

    seen = {}
    real = distill.distill_trainer_cls

    def spy(*a, **kw):
        seen["cls"] = cls = real(*a, **kw)
        cls.training_step_forwards = []
        base_step = cls.training_step

        def training_step(self, *args, **kwargs):
            before = cls.teacher_forwards
            out = base_step(self, *args, **kwargs)
            cls.training_step_forwards.append(cls.teacher_forwards - before)
            return out

        cls.training_step = training_step
        return cls

    monkeypatch.setattr("chain.finetune.distill_trainer_cls", spy)
    task = Task("small", {k: str(v) for k, v in small_task_files.items()}, 2).to_dict()
    cfg = FineTuneConfig(task=task, epochs=1, batch_size=16, show_progress=False, head="keep",
                         distill={"teacher": str(tiny_bert)})
    [res] = run_stages(Artifact.load(tiny_bert), [FineTune(cfg)], tmp_path / "out")
    assert res.status == "ok", res.reason
    steps = seen["cls"].training_step_forwards
    assert steps and not any(steps)  # training batches used the carried logits
    assert seen["cls"].teacher_forwards > 0  # dev evaluation still ran the teacher
    assert res.artifact.manifest["train"]["teacher_logits_s"] >= 0


def test_hidden_state_term_adds_the_mapped_layers_mse(tmp_path):
    """hidden: w adds w * mean over (embeddings, layer j -> round(j * L_t / L_s)) of the per-token
    MSE on real tokens; a student equal to its teacher adds nothing; padding is not counted."""
    from chain.distill import hidden_mse, layer_map

    assert layer_map(5, 6) == [(0, 0), (1, 1), (2, 2), (3, 4), (4, 5), (5, 6)]
    assert layer_map(2, 2) == [(0, 0), (1, 1), (2, 2)]
    student, teacher = _model(0), _model(1)
    settings = DistillSettings(teacher="unused", alpha=1.0, temperature=2.0, hidden=3.0)
    cls = distill_trainer_cls(Trainer, teacher, settings)
    trainer = cls(model=student.train(), args=TrainingArguments(str(tmp_path), report_to=[], use_cpu=True))
    torch.manual_seed(0)  # dropout: the same masks for the loss and the check below
    got = trainer.compute_loss(student, dict(BATCH)).item()
    torch.manual_seed(0)
    s = student(**{k: v for k, v in BATCH.items() if k != "labels"}, output_hidden_states=True)
    with torch.no_grad():
        t = teacher.eval()(**{k: v for k, v in BATCH.items() if k != "labels"}, output_hidden_states=True)
    kl = torch.nn.functional.kl_div(torch.log_softmax(s.logits / 2, -1), torch.log_softmax(t.logits / 2, -1),
                                    log_target=True, reduction="batchmean") * 4
    mse = sum(((a - b) ** 2).mean() for a, b in zip(s.hidden_states, t.hidden_states)) / 3
    assert got == pytest.approx((kl + 3.0 * mse).item(), rel=1e-4) and mse.item() > 1e-3
    assert hidden_mse(t.hidden_states, t.hidden_states).item() == 0.0
    student.eval()  # evaluation: logits only, nothing else returned for the Trainer to gather
    _, out = trainer.compute_loss(student, dict(BATCH), return_outputs=True)
    assert out.hidden_states is None
    mask = torch.ones(4, 9)
    mask[:, 5:] = 0
    noisy = tuple(h.clone() for h in t.hidden_states)
    for h in noisy:
        h[:, 5:] += 10.0  # only padding differs
    assert hidden_mse(noisy, t.hidden_states, mask).item() == 0.0
    assert hidden_mse(noisy, t.hidden_states).item() > 1.0


def test_hidden_state_term_refuses_a_teacher_of_another_width():
    from chain.distill import hidden_mse

    with pytest.raises(SpecError, match="width"):
        hidden_mse((torch.zeros(1, 2, 8),) * 2, (torch.zeros(1, 2, 16),) * 2)
    with pytest.raises(SpecError, match="hidden"):
        DistillSettings(teacher="t", hidden=-1)

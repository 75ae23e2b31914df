"""``distill_heads``: a pruned multi-task student moves toward its teacher on every head.

The teacher is a tiny BERT carrying SST-2 (own), Subj and TREC heads; the student is it
with half its FFN neurons pruned. After distilling on a pool of texts of all three tasks,
each head's KL to the teacher on unseen texts must be lower than before, the heads saved
must be the distilled ones (not the parent's, copied over them), and the model's own
head must be SST-2's.
"""
from __future__ import annotations

import pytest
import torch

from tests.compress.multihead_models import TASKS, save_multihead
from tests.stage_runner import run_stages


def _kl_per_head(student_art, teacher_art, texts) -> dict[str, float]:
    import torch.nn.functional as F

    from chain.distill_heads import _heads, multi_head
    from chain.model import load_model, load_tokenizer

    s = multi_head(load_model(student_art), _heads(student_art, list(TASKS), "student")).eval()
    t = multi_head(load_model(teacher_art), _heads(teacher_art, list(TASKS), "teacher")).eval()
    enc = dict(load_tokenizer(student_art)(texts, padding=True, truncation=True, max_length=64, return_tensors="pt"))
    with torch.inference_mode():
        so, to = s(**enc), t(**enc)
    return {k: float(F.kl_div(F.log_softmax(so[k], -1), F.log_softmax(to[k], -1), log_target=True,
                              reduction="batchmean")) for k in TASKS}


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    from chain.distill_heads import DistillHeads, DistillHeadsConfig
    from compress.prune import PruneConfig
    from compress.stages import Prune

    teacher = save_multihead(tmp_path_factory.mktemp("mh") / "sst2")
    cfg = DistillHeadsConfig(teacher=str(teacher), texts_per_task=96, epochs=3, learning_rate=2e-3,
                             batch_size=16, freeze=[])
    res = run_stages(teacher, [Prune(PruneConfig(ffn=0.5, importance="l1"), name="pruned"),
                               DistillHeads(cfg, name="recovered", parent="pruned")],
                     tmp_path_factory.mktemp("run"))
    assert [r.status for r in res] == ["ok", "ok"], [(r.name, r.reason) for r in res]
    from chain.artifact import Artifact

    return Artifact.load(teacher), res[0].artifact, res[1].artifact


def test_every_head_moves_toward_the_teacher(distilled):
    from chain.task import builtin_task

    teacher, pruned, recovered = distilled
    texts = builtin_task("sst2").load("test").texts[:48] + builtin_task("trec").load("test").texts[:48]
    before, after = _kl_per_head(pruned, teacher, texts), _kl_per_head(recovered, teacher, texts)
    for t in TASKS:
        assert after[t] < 0.7 * before[t], (t, before, after)


def test_saved_heads_are_the_distilled_ones(distilled):
    from chain.heads import head_state, head_tasks, load_head
    from chain.model import load_model

    _, pruned, recovered = distilled
    assert head_tasks(recovered.path) == sorted(TASKS)
    for t in TASKS:
        assert not torch.equal(load_head(recovered.path, t)["classifier.weight"],
                               load_head(pruned.path, t)["classifier.weight"]), t
    own = head_state(load_model(recovered))
    assert torch.equal(own["classifier.weight"], load_head(recovered.path, "sst2")["classifier.weight"])
    m = recovered.manifest
    assert m["distill_heads"]["tasks"] == sorted(TASKS) and m["distill_heads"]["texts"] == 3 * 96
    assert m["task"]["name"] == "sst2" and m["labels"] == ["negative", "positive"]


def test_evaluates_on_every_task(distilled):
    from chain.evaluate import EvalConfig, Evaluator
    from chain.task import builtin_task

    ev = Evaluator(EvalConfig(max_samples=32, threads=1), {t: builtin_task(t) for t in TASKS})
    acc = ev.accuracy(distilled[2], list(TASKS))
    assert all(acc[t]["accuracy"] is not None for t in TASKS), acc


def test_config_errors_say_what_to_do():
    from chain.distill_heads import DistillHeadsConfig
    from chain.errors import SpecError

    with pytest.raises(SpecError, match="name the teacher"):
        DistillHeadsConfig()
    with pytest.raises(SpecError, match="texts_per_task must be a positive integer"):
        DistillHeadsConfig(teacher="x", texts_per_task=0)


def test_teacher_without_a_head_is_refused(tmp_path):
    from chain.artifact import Artifact
    from chain.distill_heads import DistillHeads, DistillHeadsConfig
    from tests.conftest import save_tiny_bert

    student = save_multihead(tmp_path / "mh")
    bare = save_tiny_bert(tmp_path / "bare")
    stage = DistillHeads(DistillHeadsConfig(teacher=str(bare), texts_per_task=4))
    from chain.errors import SpecError

    with pytest.raises(SpecError, match="teacher .* carries no head for 'sst2'"):
        stage.run(Artifact.load(student), tmp_path / "out")

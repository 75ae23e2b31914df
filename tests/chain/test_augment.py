"""Teacher-labelled augmentation (chain.augment): the edits, their seeding, and the rows the
teacher labels for a distilled recovery."""
import pytest
import torch

from chain.augment import AugmentSettings, augment
from chain.distill import KEY, augmented_rows
from chain.errors import SpecError
from chain.finetune import FineTuneConfig

TEXTS = ["a gripping , funny and moving film", "the plot is thin and the jokes fall flat",
         "one of the year 's best", "dull", "an uneven but often charming comedy about two brothers"]


def test_copies_are_seeded_and_edited():
    s = AugmentSettings(copies=3, seed=1)
    out = augment(TEXTS, s)
    assert len(out) == 3 * len(TEXTS)
    assert out == augment(TEXTS, AugmentSettings(copies=3, seed=1))
    assert out != augment(TEXTS, AugmentSettings(copies=3, seed=2))
    # a one-word sentence cropped to itself is replaced instead; with seed 1 no copy repeats its source
    assert all(new != TEXTS[i % len(TEXTS)] for i, new in enumerate(out))


@pytest.mark.parametrize("edit", ["delete", "replace", "span"])
def test_each_edit_does_what_it_says(edit):
    vocab = set(" ".join(TEXTS).split())
    out = augment(TEXTS, AugmentSettings(copies=4, edits=[edit], p=0.3, span=0.5, seed=0))
    for i, new in enumerate(out):
        src, words = TEXTS[i % len(TEXTS)].split(), new.split()
        assert set(words) <= vocab and words
        if len(src) < 2:
            continue  # a one-word sentence can only be replaced
        if edit == "delete":
            assert len(words) == len(src) - max(1, round(0.3 * len(src)))
            it = iter(src)
            assert all(w in it for w in words)  # a subsequence, order kept
        elif edit == "replace":
            assert len(words) == len(src)
            assert sum(a != b for a, b in zip(src, words)) <= max(1, round(0.3 * len(src)))
        else:
            assert len(words) >= -(-len(src) // 2)
            assert any(src[j:j + len(words)] == words for j in range(len(src)))  # contiguous


@pytest.mark.parametrize("kw,msg", [({"copies": 0}, "copies"), ({"copies": 1.5}, "copies"), ({"p": 1}, "p"),
                                    ({"span": 0}, "span"), ({"edits": ["swap"]}, "edits"),
                                    ({"edits": []}, "edits"), ({"seed": "x"}, "seed")])
def test_settings_are_validated(kw, msg):
    with pytest.raises(SpecError, match=msg):
        AugmentSettings(**kw)
    with pytest.raises(SpecError, match=msg):
        FineTuneConfig(distill={"teacher": "t", "augment": kw})


def test_unknown_field_and_wrong_type_are_one_spec_error():
    with pytest.raises(SpecError, match="augment"):
        FineTuneConfig(distill={"teacher": "t", "augment": {"copise": 2}})
    with pytest.raises(SpecError, match="augment"):
        FineTuneConfig(distill={"teacher": "t", "augment": 2})


def test_rows_are_labelled_by_the_teachers_argmax(tiny_bert):
    from transformers import AutoTokenizer, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    teacher = BertForSequenceClassification.from_pretrained(tiny_bert).eval()
    with torch.no_grad():
        teacher.classifier.weight.normal_(0, 5)  # distinct, confident logits
    texts = augment(TEXTS, AugmentSettings(copies=2, seed=3))
    rows = augmented_rows(tok, texts, 16, teacher)
    enc = tok(texts, truncation=True, max_length=16, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = teacher(**enc).logits
    assert len(rows) == len(texts)
    for r, e in zip(rows, expected):
        assert r["labels"] == int(e.argmax())
        assert r[KEY] == pytest.approx(e.tolist(), abs=1e-4)
    assert len({r["labels"] for r in rows}) >= 1
    assert all(KEY not in r for r in augmented_rows(tok, texts, 16, teacher, keep_logits=False))

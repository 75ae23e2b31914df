"""Every declared architecture x every compression verb: it works, or check_stage refuses it up front.

Tiny classifiers of the 12 architectures (``tiny_models.py``), each trained on SST-2 for
``TRAIN_STEPS`` steps so that it separates the classes as a real fine-tuned parent does, go
through PyTorch int8, structured pruning (then ONNX export + ONNX int8 of the pruned model),
ONNX export, ONNX int8 and ONNX int4. A verb that runs must agree with its parent's
argmax on >= 95% of the first 128 real SST-2 dev sentences, keep its logits faithful (the
per-sentence margin z1 - z0 correlates with the parent's: r >= 0.999 for the fp32 export,
0.99 for 8-bit, 4-bit and pruning; argmax agreement alone says little when a
parent predicts one class almost everywhere) and list every layer it left float (the
head, and only the head, for the quantizers); one that cannot run must be refused by
``chain.arch.check_stage`` with a message naming the architecture and what to do.
The expected refusals are listed here, so a verb silently starting or stopping to work
on an architecture fails the test.

The results are the table in docs/support-matrix.md: regenerate it with
``CHAINPRESS_WRITE_MATRIX=1 python -m pytest tests/compress/test_arch_matrix.py``;
``test_support_matrix_file_is_generated`` checks the committed file matches (agreement
figures aside, which may move by a sentence on another CPU).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import configs, save_tiny

from chain.errors import SpecError
from chain.task import builtin_task
from chain.arch import ARCHS, check_stage
from compress.prune import PruneConfig

REPO = Path(__file__).resolve().parents[2]
MATRIX = REPO / "docs" / "support-matrix.md"
MODEL_TYPES = list(configs())
STAGES = ("quantize_int8", "prune", "export_onnx", "quantize_onnx_int8", "quantize_onnx_int4")
PRUNE = PruneConfig(heads=0.5, ffn=0.5)
PRUNE_FFN = PruneConfig(ffn=0.5)  # where check_stage refuses heads (MPNet, DeBERTa-v2)
REFUSED = {("albert", "prune"), ("modernbert", "prune"), ("gpt2", "prune")}
TRAIN_STEPS = 150  # SST-2 steps per parent: dev accuracy 0.74-0.81 (docs/results/int4-tiny-fidelity-trained-*)
MIN_AGREEMENT = 0.95  # argmax agreement with the parent, every stage
MIN_MARGIN_R = {"export_onnx": 0.999}  # Pearson r of the margins; others 0.99


def min_agreement(stage: str) -> float:
    return MIN_AGREEMENT


def min_r(stage: str) -> float:
    return MIN_MARGIN_R.get(stage, 0.99)

N_TEXTS = 128
RESULTS: dict[tuple[str, str], str] = {}
CURRENT = [""]  # the stage being run, for assert_informative


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return builtin_task("sst2").load("dev").texts[:N_TEXTS]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, texts):
    """model_type -> its directory, with hf/ (built once) and onnx/ (exported on first use)."""
    from compress.onnx_export import export_onnx

    made: dict[str, Path] = {}

    def get(mt: str, onnx: bool = False) -> Path:
        if mt not in made:
            made[mt] = tmp_path_factory.mktemp(mt.replace("-", "_"))
            save_tiny(mt, made[mt] / "hf", train_steps=TRAIN_STEPS)
        if onnx and not (made[mt] / "onnx" / "model.onnx").is_file():
            export_onnx(made[mt] / "hf", made[mt] / "onnx", texts)
        return made[mt]
    return get


def _encode(tok, texts, names):
    for i in range(0, len(texts), 16):
        enc = tok(texts[i:i + 16], padding=True, truncation=True, max_length=128, return_tensors="np")
        yield {k: v for k, v in enc.items() if k in names}


def torch_predictions(model, tok, texts, decoder: bool) -> np.ndarray:
    """(n, labels) logits."""
    import inspect

    # what the model takes; GPT-2 would read token_type_ids as extra token embeddings
    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters and not decoder
    names = {"input_ids", "attention_mask"} | ({"token_type_ids"} if takes_types else set())
    out = []
    with torch.inference_mode():
        for enc in _encode(tok, texts, names):
            out.append(model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.float().numpy())
    return np.concatenate(out)


def onnx_predictions(path: Path, tok, texts) -> np.ndarray:
    from compress.onnx_export import onnx_logits, ort_session

    sess = ort_session(path / "model.onnx")
    names = {i.name for i in sess.get_inputs()}
    return np.concatenate([onnx_logits(sess, enc) for enc in _encode(tok, texts, names)])


def fidelity(child: np.ndarray, parent: np.ndarray) -> tuple[float, float]:
    """(argmax agreement, Pearson r of the margins z1 - z0) of two (n, 2) logit arrays."""
    agree = float((child.argmax(-1) == parent.argmax(-1)).mean())
    mc, mp = child[:, 1] - child[:, 0], parent[:, 1] - parent[:, 0]
    r = float(np.corrcoef(mc, mp)[0, 1]) if mc.std() > 0 and mp.std() > 0 else 0.0
    return agree, r


def test_fidelity_tells_a_broken_child_from_a_faithful_one():
    rng = np.random.default_rng(0)
    parent = np.stack([np.zeros(200), 2 + 0.1 * rng.standard_normal(200)], 1)  # one class everywhere
    faithful = parent + 0.01 * rng.standard_normal(parent.shape)
    broken = np.stack([np.zeros(200), 2 + 0.1 * rng.standard_normal(200)], 1)  # same class, unrelated margins
    assert fidelity(faithful, parent)[1] > 0.95
    assert fidelity(broken, parent)[0] == 1.0 and abs(fidelity(broken, parent)[1]) < 0.3


def _hf(path: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return AutoModelForSequenceClassification.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


UNINFORMATIVE: set[tuple[str, str]] = set()


def assert_informative(preds: np.ndarray, what: str) -> None:
    """Record a parent predicting (nearly) one class everywhere: any child would 'agree' with it.

    Untrained tiny models at the default init do exactly that; the trained parents here
    should not, and the table marks any cell that does so its agreement is not read as evidence.
    """
    minority = min(float((preds.argmax(-1) == c).mean()) for c in (0, 1))
    if minority <= 0.05:
        UNINFORMATIVE.add(tuple(what.split(" ", 1)[0:1]) + (CURRENT[0],))


@torch.no_grad()
def damp_half(model, arch, factor: float = 0.05) -> None:
    """Scale down the first half of every layer's heads (KV groups) and FFN neurons.

    Trained models carry redundant heads and neurons; a random one does not, so pruning
    half of it changes its function whatever is removed. Damping half of each gives L1
    importance a right answer: pruning must find exactly those and keep the function.
    """
    from compress.prune import attention

    for block in model.get_submodule(arch.full(model, arch.blocks)):
        att = attention(model, arch, block)
        g = att.groups // 2
        att.q.weight[:g * att.rep * att.d] *= factor
        for m in (att.k, att.v):
            m.weight[:g * att.d] *= factor
        att.o.weight[:, :g * att.rep * att.d] *= factor
        down = block.get_submodule(arch.ffn.down)
        half = down.in_features // 2
        for p in arch.ffn.up:
            block.get_submodule(p).weight[:half] *= factor
        down.weight[:, :half] *= factor


def run_quantize_int8(mt, d, texts, tmp):
    from compress.torch_int8 import Int8DynamicConfig, load_int8, save_int8
    from compress.walker import linear_layers

    model, tok = _hf(d(mt) / "hf")
    arch = ARCHS[mt]
    fields = save_int8(model, tmp, Int8DynamicConfig())
    q = load_int8(type("A", (), {"path": tmp})())
    parent = torch_predictions(model, tok, texts, arch.decoder)
    assert_informative(parent, mt)
    agree = fidelity(torch_predictions(q, tok, texts, arch.decoder), parent)
    linears = {n for n, _ in linear_layers(model, kinds=arch.linear_kinds)}
    float_linears = {n for n in fields["float_layers"] if n in linears}
    assert float_linears == set(arch.head), (float_linears, arch.head)  # the head, and only the head
    assert fields["quantized_layers"] == len(linears) - len(arch.head)
    return agree, sorted(float_linears)


def run_prune(mt, d, texts, tmp):
    from compress.onnx_export import export_onnx
    from compress.onnx_quantize import quantize_onnx_int8
    from compress.prune import prune_

    model, tok = _hf(d(mt) / "hf")
    arch = ARCHS[mt]
    cfg = PRUNE_FFN if arch.no_head_prune else PRUNE
    damp_half(model, arch)
    parent = torch_predictions(model, tok, texts, arch.decoder)
    assert_informative(parent, f"{mt} (damped)")
    before = sum(p.numel() for p in model.parameters())
    report = prune_(model, cfg)
    assert report["params"] < before and bool(report["heads"]) == bool(cfg.heads)
    assert set(report["ffn_kept"].values()) == {32}
    model.save_pretrained(tmp / "hf")
    tok.save_pretrained(tmp / "hf")
    reloaded, _ = _hf(tmp / "hf")  # a plain HF checkpoint: from_pretrained rebuilds the pruned shapes
    pruned = torch_predictions(reloaded, tok, texts, arch.decoder)
    assert np.allclose(pruned, torch_predictions(model, tok, texts, arch.decoder), atol=1e-5)
    export_onnx(tmp / "hf", tmp / "onnx", texts)  # validated against the pruned PyTorch model
    (tmp / "onnx-int8").mkdir()
    q = quantize_onnx_int8(tmp / "onnx", tmp / "onnx-int8", texts=texts)
    agree_q, r_q = fidelity(onnx_predictions(tmp / "onnx-int8", tok, texts), pruned)
    assert agree_q >= min_agreement("quantize_onnx_int8") and r_q >= min_r("quantize_onnx_int8"), \
        (agree_q, r_q, q["float_layers"])
    return fidelity(pruned, parent), []


def run_export_onnx(mt, d, texts, tmp):
    model, tok = _hf(d(mt) / "hf")
    path = d(mt, onnx=True) / "onnx"
    parent = torch_predictions(model, tok, texts, ARCHS[mt].decoder)
    assert_informative(parent, mt)
    return fidelity(onnx_predictions(path, tok, texts), parent), []


def _onnx_quantized(mt, d, texts, tmp, quantize):
    from transformers import AutoTokenizer

    src = d(mt, onnx=True) / "onnx"
    report = quantize(src, tmp)
    tok = AutoTokenizer.from_pretrained(src)
    parent = onnx_predictions(src, tok, texts)
    assert_informative(parent, f"{mt} (ONNX)")
    agree = fidelity(onnx_predictions(tmp, tok, texts), parent)
    floats = report["float_layers"]
    weights = [n for n, why in floats.items() if not n.split("/")[-1].startswith("Gather")]
    assert all(why.startswith("head") for n, why in floats.items() if n in weights), floats  # body all quantized
    assert weights, "the head must be listed as float"
    return agree, sorted({_module(n) for n in weights})


def _module(node: str) -> str:
    from compress.onnx_graph import node_module

    return node_module(node)


def run_quantize_onnx_int8(mt, d, texts, tmp):
    from chain.environment import int8_saturates
    from compress.onnx_quantize import quantize_onnx_int8

    def q(src, out):
        report = quantize_onnx_int8(src, out, texts=texts)
        assert report["reduce_range"] is int8_saturates()  # 7-bit weights exactly where 8-bit sums saturate
        return report
    return _onnx_quantized(mt, d, texts, tmp, q)


def run_quantize_onnx_int4(mt, d, texts, tmp):
    import onnx

    from compress.onnx_int4 import quantize_onnx_int4

    calib = builtin_task("sst2").load("train").texts[:128]  # GPTQ calibrates on train; agreement is on dev

    def q(src, out):
        report = quantize_onnx_int4(src, out, calib_texts=calib)
        assert report["method"] == "gptq" and report["calibration_samples"] == 128
        onnx.checker.check_model(onnx.load(str(out / "model.onnx")))  # opset 21 graph still valid
        return report
    return _onnx_quantized(mt, d, texts, tmp, q)


RUNNERS = {s: globals()[f"run_{s}"] for s in STAGES}


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("mt", MODEL_TYPES)
def test_stage_works_or_is_refused(mt, stage, dirs, texts, tmp_path):
    cfg = json.loads((dirs(mt) / "hf" / "config.json").read_text())
    note = ""
    if stage == "prune" and ARCHS[mt].no_head_prune:
        with pytest.raises(SpecError, match=f"pruning heads: {ARCHS[mt].name}") as e:
            check_stage(stage, cfg, PRUNE)
        note = f"; ffn only, heads refused: {str(e.value).split(': ', 1)[1]}"
    try:
        check_stage(stage, cfg, (PRUNE_FFN if note else PRUNE) if stage == "prune" else None)
    except SpecError as e:
        assert (mt, stage) in REFUSED, f"unexpected refusal: {e}"
        msg = str(e)
        assert ARCHS[mt].name in msg and "drop `prune`" in msg, msg  # names the architecture and what to do
        RESULTS[(mt, stage)] = f"refused: {msg.split(': ', 1)[1]}"
        return
    assert (mt, stage) not in REFUSED, "expected check_stage to refuse this"
    CURRENT[0] = stage
    (agreement, r), floats = RUNNERS[stage](mt, dirs, texts, tmp_path)
    one_class = (mt, stage) in UNINFORMATIVE
    assert agreement >= min_agreement(stage), f"{mt} {stage}: argmax agreement {agreement:.3f} with the parent"
    assert r >= min_r(stage), f"{mt} {stage}: logit margins correlate at r={r:.3f} with the parent's"
    RESULTS[(mt, stage)] = f"ok ({agreement:.2f}{'*' if one_class else ''}, r {r:.3f})" + (
        f"; float: {', '.join(f'`{f}`' for f in floats)}" if floats else "") + note


def render() -> str:
    head = "| architecture | " + " | ".join(STAGES) + " |\n|---|" + "---|" * len(STAGES) + "\n"
    rows = "".join(f"| {ARCHS[mt].name} (`{mt}`) | " + " | ".join(RESULTS[(mt, s)].replace("|", "\\|")
                                                                for s in STAGES) + " |\n" for mt in MODEL_TYPES)
    return ("# Support matrix: architectures x compression stages\n\n"
            "Generated by `CHAINPRESS_WRITE_MATRIX=1 python -m pytest tests/compress/test_arch_matrix.py` "
            "(do not edit by hand). Each cell is what the test saw on a tiny model of the "
            "architecture (2 layers, hidden 32, built from its config at transformers' init, std 0.02, then "
            f"trained {TRAIN_STEPS} AdamW steps on SST-2 train; `tests/compress/tiny_models.py`): "
            f"`ok (a, r r)` = ran, and its argmax agreed with its parent's on a fraction `a` of the first {N_TEXTS} "
            "SST-2 dev sentences (the test requires >= 0.95 for every stage); `*` = the parent predicted one "
            "class on more than 95% of them, so that agreement says little; `r` = Pearson correlation of the "
            "per-sentence logit margin z1 - z0 with the parent's, which stays informative when the argmax "
            "does not (the test requires >= 0.999 for the fp32 export, 0.99 for the others); "
            "then the modules left float (for "
            "ONNX, by the module their nodes come from); `refused` = `chain.arch.check_stage` refuses "
            "the stage before anything trains, with this message. `prune` is heads=0.5, ffn=0.5 (L1) "
            "on a parent whose first half of heads and FFN neurons was scaled by 0.05 (what L1 must find), "
            "and the pruned model is then exported and ONNX-int8 quantized too. `export_onnx` is the "
            "parent of the two ONNX quantizers. `quantize_onnx_int4` is GPTQ (the default), calibrated on "
            "128 SST-2 train sentences, with 4-bit embeddings (each int4 setting on these trained parents: "
            "docs/results/int4-tiny-fidelity-trained-2026-12-04.md; on random-init parents it stayed at "
            "0.88-0.92 for four architectures: docs/results/int4-tiny-fidelity-2026-12-02.md). ONNX Runtime int8 uses 7-bit "
            "weights (`reduce_range`) where the CPU has AVX2 without VNNI; figures here come from the "
            "CPU that last wrote the file.\n\n" + head + rows)


def test_support_matrix_file_is_generated():
    if len(RESULTS) < len(MODEL_TYPES) * len(STAGES):
        pytest.skip("run the whole matrix (this file) to compare or write docs/support-matrix.md")
    text = render()
    if os.environ.get("CHAINPRESS_WRITE_MATRIX") == "1":
        MATRIX.write_text(text)
    figures = re.compile(r"ok \(\d\.\d\d\*?, r -?\d\.\d{3}\)")
    assert MATRIX.is_file(), "docs/support-matrix.md is missing; write it with CHAINPRESS_WRITE_MATRIX=1"
    assert figures.sub("ok", MATRIX.read_text()) == figures.sub("ok", text), \
        "docs/support-matrix.md differs from this run; regenerate it with CHAINPRESS_WRITE_MATRIX=1"

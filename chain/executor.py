"""Run a chain spec: cached stages, evaluation on every task, gates, rollback, resume.

Each stage's artifact lives in ``OUT/artifacts/<stage>-<key>/`` where ``key`` hashes
(parent's key, stage type, stage config, task data): re-running a spec reuses every
finished stage, a run killed at any moment (``kill -9`` included) resumes from the last
finished one, and a changed config or task recomputes that stage and its descendants
only. Artifacts are published atomically (``staging_dir``); ``.tmp-*`` leftovers are
removed at start and never read. A NaN/inf loss is recorded as
``OUT/artifacts/<stage>-<key>.failed.json`` so a resume does not diverge again.

>>> results = run_chain(load_spec("examples/sentiment_chain.yaml"), "runs/sentiment")
>>> results["stages"][-1]["status"]
'ok'
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .artifact import MANIFEST, Artifact, clean_stale, staging_dir, write_manifest
from .errors import ChainpressError, SpecError, TrainingError
from .evaluate import Evaluator
from .faults import pause_point
from .gates import check_gate
from .heads import copy_heads
from .overlap import train_eval_overlap
from .report import write_results
from .spec import ChainSpec, StageSpec, check_inputs
from .stage import resolve_stage_refs

NOT_IN_KEY = ("show_progress",)  # config fields that do not change the result
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


def dir_hash(path: Path) -> str:
    """Content hash of a model directory (the source model's cache key). A chainpress
    artifact used as a source is hashed without its manifest, which gains evaluations."""
    h = hashlib.sha256()
    for p in sorted(q for q in Path(path).rglob("*") if q.is_file() and q.name != MANIFEST):
        h.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


def stage_key(parent_key: str, stage_type: str, config, task_fingerprint: str | None) -> str:
    cfg = {k: v for k, v in (dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)).items()
           if k not in NOT_IN_KEY}
    blob = json.dumps({"parent": parent_key, "type": stage_type, "config": cfg, "task": task_fingerprint},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """One run per output directory; the OS drops the lock if the process dies (kill -9)."""
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / ".lock", "w")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SpecError(f"another chain run is using {out}; wait for it or choose another --output") from None
        yield
    finally:
        f.close()


class ChainRun:
    def __init__(self, spec: ChainSpec, out: Path, force: str | None, log: Callable[[str], None]):
        self.spec, self.out, self.force, self.log = spec, out, force, log
        self.art_root = out / "artifacts"
        self.evaluator = Evaluator(spec.eval, spec.tasks, spec.trust_remote_code)
        self.t0 = time.perf_counter()

    # ---- one attempt: cached artifact, cached divergence, or a fresh run ----------------
    def attempt(self, st: StageSpec, config, parent: Node, force: bool) -> Attempt:
        task_fp = self.spec.tasks[st.task].fingerprint() if st.task else None
        key = stage_key(parent.key, st.type, self._keyed(config), task_fp)
        dest, diverged = self.art_root / f"{st.name}-{key}", self.art_root / f"{st.name}-{key}.failed.json"
        if not force and (dest / MANIFEST).is_file():
            art = Artifact.load(dest)
            # a stage skipped for want of hardware (``kernels`` without CUDA) is re-tried: the
            # next run may be on a machine that has it, and skipping again costs nothing
            if not art.manifest.get("skip_reason"):
                return Attempt(key, config, art, cached=True)
        if not force and diverged.is_file():
            return Attempt(key, config, cached=True, diverged=True, error=json.loads(diverged.read_text())["reason"])
        diverged.unlink(missing_ok=True)
        self.log(f"[{self._clock()}] stage {st.name}: running {st.type}"
                 + (f" on {st.task}" if st.task else "") + f" from {parent.name} (key {key})")
        t0 = time.perf_counter()
        try:
            with staging_dir(dest) as tmp:
                stage = st.build(config)
                if hasattr(stage, "trust_remote_code"):
                    stage.trust_remote_code = self.spec.trust_remote_code
                fields = stage.run(parent.artifact, tmp) or {}
                pause_point(f"saved:{st.name}")
                fields.setdefault("num_labels", parent.artifact.manifest.get("num_labels"))
                fields.setdefault("task", parent.artifact.manifest.get("task"))
                if st.task is None and fields.get("format") in ("hf", "torch-int8"):
                    copy_heads(parent.artifact.path, tmp)  # same encoder family: earlier heads still apply
                write_manifest(tmp, stage=st.name, stage_type=st.type, key=key, parent=str(parent.artifact.path),
                               parent_stage=parent.name, parent_key=parent.key, config=config_dict_of(config),
                               wall_time_s=round(time.perf_counter() - t0, 2), **fields)
                pause_point(f"manifest:{st.name}")
        except KeyboardInterrupt:
            raise
        except TrainingError as e:
            _write_json(diverged, {"stage": st.name, "key": key, "reason": str(e)})
            return Attempt(key, config, diverged=True, error=str(e), wall_time_s=time.perf_counter() - t0)
        except ChainpressError as e:
            return Attempt(key, config, error=str(e), wall_time_s=time.perf_counter() - t0)
        except Exception as e:  # a library failure in one stage must not lose the others
            log.debug("stage %s failed:\n%s", st.name, traceback.format_exc())
            return Attempt(key, config, error=f"{type(e).__name__}: {e}", wall_time_s=time.perf_counter() - t0)
        pause_point(f"published:{st.name}")
        return Attempt(key, config, Artifact.load(dest), wall_time_s=time.perf_counter() - t0)

    def _keyed(self, config):
        """``config`` as it enters the cache key: a distillation teacher by content (an artifact of
        this run by its ``<stage>-<key>`` name, another directory by its hash), not by a path
        that changes with the working directory or the output's location."""
        d = getattr(config, "distill", None)
        if d is None or not Path(d.teacher).is_dir():
            return config
        t = Path(d.teacher).resolve()
        ref = f"artifact:{t.name}" if t.parent == self.art_root.resolve() else f"dir:{dir_hash(t)}"
        return dataclasses.replace(config, distill=dataclasses.replace(d, teacher=ref))

    def _clock(self) -> str:
        return f"{time.perf_counter() - self.t0:6.0f}s"

    def measure(self, node: Node) -> dict[str, dict]:
        return self.evaluator.accuracy(node.artifact, node.tasks) if node.tasks else {}

    # ---- one stage: attempts, evaluation, gate, decision -------------------------------
    def run_stage(self, st: StageSpec, parent: Node, force: bool) -> tuple[dict, Node | None, bool]:
        """-> (results row, the node downstream stages build on, stop the chain?)"""
        own = st.task or parent.own_task
        tasks = parent.tasks + ([st.task] if st.task and st.task not in parent.tasks else [])
        gate = st.gate
        configs = [st.config]
        if gate is not None and gate.on_fail == "retry":
            lr = st.config.learning_rate
            configs += [dataclasses.replace(st.config, learning_rate=lr * gate.retry_lr_factor ** k)
                        for k in range(1, gate.retries + 1)]
        parent_acc = {t: r["accuracy"] for t, r in self.measure(parent).items()}
        row = {"name": st.name, "type": st.type, "task": own, "parent": parent.name, "attempts": [],
               "gate": dataclasses.asdict(gate) if gate else None, "parent_accuracy": parent_acc}
        for i, config in enumerate(configs):
            att = self.attempt(st, config, parent, force)
            rec = {"key": att.key, "cached": att.cached, "wall_time_s": round(att.wall_time_s, 1)}
            if hasattr(config, "learning_rate"):
                rec["learning_rate"] = config.learning_rate
            row["attempts"].append(rec)
            if att.artifact is None and not att.diverged:  # the stage crashed: nothing to gate
                rec["status"] = "failed"
                row.update(status="failed", reason=att.error, cached=att.cached, key=att.key)
                stop = gate is not None and gate.on_fail == "stop"
                return row, None, stop
            if att.artifact is not None and att.artifact.manifest.get("skip_reason"):
                # a runtime that cannot run here (e.g. the `kernels` stage without CUDA): nothing to
                # evaluate or gate; stages built on it are skipped too
                rec["status"] = "skipped"
                row.update(status="skipped", reason=att.artifact.manifest["skip_reason"], cached=att.cached,
                           key=att.key)
                return row, None, False
            if att.diverged:
                reasons = [f"training diverged: {att.error}"]
                acc = {}
            else:
                node = Node(st.name, att.artifact, att.key, tasks, own)
                try:
                    evals = self.measure(node)
                    pause_point(f"evaluated:{st.name}")
                    latency = self.evaluator.latency(att.artifact, parent.artifact, own) \
                        if gate is not None and gate.needs_latency and own else None
                except (KeyboardInterrupt, SpecError):
                    raise
                except Exception as e:  # the artifact stays published; a re-run evaluates it again
                    rec["status"] = "failed"
                    row.update(status="failed", reason=f"evaluation failed: {type(e).__name__}: {e}",
                               cached=att.cached, key=att.key, artifact=str(att.artifact.path))
                    return row, None, gate is not None and gate.on_fail == "stop"
                acc = {t: r["accuracy"] for t, r in evals.items()}
                reasons = check_gate(gate, st.name, acc, parent_acc, own, latency and latency["p50_ms"])
                row.update(accuracy=acc, notes={t: r["note"] for t, r in evals.items() if r.get("note")},
                           artifact=str(att.artifact.path), key=att.key, latency_ms=latency,
                           train=att.artifact.manifest.get("train"),
                           stage_wall_time_s=att.artifact.manifest.get("wall_time_s"))
            rec.update(status="passed" if not reasons else "gate_failed", reasons=reasons, accuracy=acc)
            if not reasons:
                row.update(status="cached" if att.cached else "ok", cached=att.cached, reason="")
                return row, node, False
            if i + 1 < len(configs):
                self.log(f"[{self._clock()}] stage {st.name}: gate failed ({'; '.join(reasons)}); "
                         f"retrying with learning_rate {configs[i + 1].learning_rate:g}")
        why = "; ".join(reasons) + (f" (after {len(configs)} attempts)" if len(configs) > 1 else "")
        row["cached"] = all(a["cached"] for a in row["attempts"])
        if gate is not None and gate.on_fail == "stop":
            row.update(status="failed", reason=f"gate failed, chain stopped: {why}; the result is {parent.name!r}")
            return row, None, True
        row.update(status="rolled_back", reason=f"{why}; rolled back to {parent.name!r}")
        return row, parent, False

    def run(self, baseline: bool) -> dict:
        spec = self.spec
        source = Artifact.load(spec.model_path())
        nodes = {"source": Node("source", source, dir_hash(source.path))}
        results = {"spec": spec.source, "name": spec.name, "model": str(source.path), "output": str(self.out),
                   "tasks": list(dict.fromkeys(s.task for s in spec.stages if s.task)),
                   "eval": dataclasses.asdict(spec.eval), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "stages": [], "overlap": train_eval_overlap(spec)}
        names = [s.name for s in spec.stages]
        if self.force is not None and self.force not in names + [f"baseline-{s.name}" for s in spec.stages]:
            raise SpecError(f"--force {self.force!r}: no such stage; stages: {', '.join(names)}")
        forcing, stopped, previous = False, None, "source"
        last_node = nodes["source"]
        for st in spec.stages:
            forcing = forcing or st.name == self.force
            parent_name = st.parent or previous
            previous = st.name
            parent = nodes.get(parent_name)
            if stopped or parent is None:
                why = f"the chain stopped at stage {stopped!r}" if stopped else \
                    f"parent stage {parent_name!r} did not produce a model"
                row = {"name": st.name, "type": st.type, "task": st.task, "parent": parent_name,
                       "status": "skipped", "reason": why}
            else:
                st = dataclasses.replace(st, config=resolve_stage_refs(
                    st.config, {n: node.artifact for n, node in nodes.items()}))
                row, node, stop = self.run_stage(st, parent, forcing)
                if node is not None:
                    nodes[st.name] = last_node = node
                if stop:
                    stopped = st.name
            results["stages"].append(row)
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

        Replays, from the base model and in order, every fine-tune stage on the final task that
        the chain kept (a distillation stage included, its teacher mapped to the replayed
        stage), so the comparison isolates what the earlier tasks bring. With none kept, the
        last fine-tune stage is replayed alone."""
        last = self.spec.baseline_stage()
        if last is None:
            raise SpecError("baseline: the chain has no fine-tune stage to compare with")
        kept = {r["name"] for r in rows if r.get("status") in ("ok", "cached")}
        replay = [s for s in self.spec.stages if s.task == last.task and s.name in kept]
        replay = replay or [last]
        refs = {n: node.artifact for n, node in nodes.items()}
        parent, row, done, forcing = nodes["source"], {}, [], False
        for s in replay:
            st = dataclasses.replace(s, name=f"baseline-{s.name}", parent=parent.name, gate=None)
            st = dataclasses.replace(st, config=resolve_stage_refs(st.config, refs))
            forcing = forcing or self.force == st.name  # --force baseline-X: X's replay and later ones
            row, node, _ = self.run_stage(st, parent, forcing)
            done.append(row)
            self._report(row)
            if node is None:
                break
            refs[s.name] = node.artifact  # a later replayed stage's teacher is the replayed one
            parent = node
        chain_node = nodes.get(last.name)
        chain_acc = self.measure(chain_node).get(last.task, {}).get("accuracy") if chain_node else None
        base_acc = (row.get("accuracy") or {}).get(last.task) if row.get("status") in ("ok", "cached") else None
        gain = None if chain_acc is None or base_acc is None else round(100 * (chain_acc - base_acc), 2)
        return {"stage": row["name"], "task": last.task, "status": row["status"], "reason": row.get("reason", ""),
                "artifact": row.get("artifact"), "accuracy": base_acc, "chain_stage": chain_node.name if chain_node else None,
                "chain_accuracy": chain_acc, "gain_points": gain, "replayed": [s.name for s in replay],
                "row": row, "rows": done}

    def _report(self, row: dict) -> None:
        acc = row.get("accuracy") or {}
        accs = ", ".join(f"{t} {a:.4f}" if a is not None else f"{t} n/a" for t, a in acc.items())
        self.log(f"[{self._clock()}] stage {row['name']}: {row['status']}" + (f"; accuracy {accs}" if accs else "")
                 + (f" ({row['reason']})" if row.get("reason") else ""))

    def _write(self, results: dict, last: Node) -> None:
        results["final_artifact"] = str(last.artifact.path)
        write_results(results, self.out)


def config_dict_of(config) -> dict:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config or {})


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def run_chain(spec: ChainSpec, output: str | os.PathLike | None = None, force: str | None = None,
              baseline: bool | None = None, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) ``spec``; write ``OUT/results.json`` and ``OUT/report.md``; return the results."""
    out = Path(output or spec.output or Path("runs") / spec.name)
    with output_lock(out):
        removed = clean_stale(out / "artifacts")
        if removed:
            log(f"removed {len(removed)} unfinished artifact(s) left by an interrupted run: {', '.join(removed)}")
        check_inputs(spec)  # every split of every task, before any training
        if spec.eval.threads:
            import torch

            torch.set_num_threads(spec.eval.threads)
        run = ChainRun(spec, out, force, log)
        return run.run(spec.baseline if baseline is None else baseline)


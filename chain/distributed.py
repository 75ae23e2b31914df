"""Fine-tuning on several processes: the same ``FineTune`` stage under ``torchrun``.

``FineTune`` is a plain ``transformers.Trainer`` run, so DDP (or FSDP, through
``extra_args``) needs no code of its own: every rank runs ``FineTune.train``, Trainer
shards the batches and all-reduces gradients, rank 0 writes the model. Two ways in:

* in a chain spec, ``processes: N`` in a fine-tune config: the runner launches
  ``python -m torch.distributed.run --standalone --nproc_per_node N -m chain finetune
  --into <staging dir>`` for that stage (gloo on CPU, NCCL on GPUs) and publishes the
  result like any other stage;
* by hand, one stage: ``torchrun --nproc_per_node 2 -m chain finetune --parent DIR
  --config stage.yaml --out DIR`` (or ``accelerate launch -m chain finetune ...``).

The global batch is ``batch_size * processes``; with the same global batch and seed the
result is close to, not bit-equal to, a one-process run (different reduction order).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .artifact import Artifact, publish, write_manifest
from .errors import ChainpressError, SpecError, TrainingError
from .stage import RunContext, config_dict

RESULT = "_ddp_result.json"
JOB = "_ddp_job.json"


def launch_finetune(stage, parent: Artifact, out_dir: Path, ctx: RunContext) -> dict:
    """Run ``stage`` (a FineTune with ``processes > 1``) under torchrun, writing into ``out_dir``."""
    cfg = config_dict(stage.config)
    job = out_dir / JOB
    job.write_text(json.dumps(cfg, default=str))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={stage.config.processes}", "-m", "chain", "finetune",
           "--parent", str(parent.path), "--config", str(job), "--into", str(out_dir)]
    if ctx.trust_remote_code:
        cmd.append("--trust-remote-code")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    job.unlink(missing_ok=True)
    result = out_dir / RESULT
    data = json.loads(result.read_text()) if result.is_file() else {}
    result.unlink(missing_ok=True)
    if proc.returncode != 0 or "fields" not in data:
        msg = data.get("error") or (proc.stderr or proc.stdout).strip().splitlines()[-20:]
        if data.get("kind") == "TrainingError":
            raise TrainingError(msg)
        raise ChainpressError(f"the {stage.config.processes}-process fine-tune failed (exit {proc.returncode}): "
                              f"{msg if isinstance(msg, str) else chr(10).join(msg)}")
    return data["fields"]


def _load_config(path: Path):
    import yaml

    from .finetune_config import FineTuneConfig
    from .spec import build_dataclass
    from .task import builtin_task

    try:
        raw = yaml.safe_load(path.read_text())  # JSON is YAML
    except (OSError, yaml.YAMLError) as e:
        raise SpecError(f"cannot read fine-tune config {path}: {e}") from None
    if isinstance(raw, dict) and isinstance(raw.get("task"), str):
        raw["task"] = builtin_task(raw["task"]).to_dict()
    return build_dataclass(FineTuneConfig, raw, str(path))


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def finetune_cli(parent: Path, config: Path, out: Path | None = None, into: Path | None = None,
                 trust_remote_code: bool = False) -> None:
    from .finetune import FineTune

    stage = FineTune(_load_config(config))
    ctx = RunContext(trust_remote_code=trust_remote_code)
    parent_art = Artifact.load(parent)
    if into is not None:  # a rank of chain.distributed.launch_finetune
        try:
            fields = stage.train(parent_art, into, ctx)
        except ChainpressError as e:
            if _rank() == 0:
                (into / RESULT).write_text(json.dumps({"error": str(e), "kind": type(e).__name__}))
            raise
        if _rank() == 0:
            (into / RESULT).write_text(json.dumps({"fields": fields}, default=str))
        return
    # Standalone: every rank must see the same Trainer scratch directory, so the staging
    # directory has a fixed name; rank 0 publishes it.
    out = Path(out)
    tmp = out.parent / f".tmp-{out.name}-finetune"
    tmp.mkdir(parents=True, exist_ok=True)
    fields = stage.run(parent_art, tmp, ctx)
    if _rank() == 0:
        write_manifest(tmp, stage="finetune", stage_type="finetune", parent=str(parent_art.path),
                       config=config_dict(stage.config), **fields)
        publish(tmp, out)

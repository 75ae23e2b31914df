"""The members of an ensemble or soup: K fine-tunes of one parent, each cached on its own.

Each member is a sealed artifact in ``OUT/artifacts/members/member-<key>``, the key
hashing (the parent's key, the member's fine-tune config, the task data) as
``chain.cache.stage_key`` does for a stage. A run killed while member 3 of 4 trains keeps
members 1 and 2 (published atomically like any artifact) and trains only 3 and 4 on
resume; an ``ensemble`` and a ``soup`` stage over the same members share them.

When the parent has no head for the task, every member starts from the *same* fresh head
(``init-<key>``: the parent with a head seeded by ``head_seed``), so the members differ by
their seed and overrides only and their weights can be averaged, head included.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifact import Artifact, clean_stale, link_files, staging_dir, verify, write_manifest
from .cache import dir_hash, stage_key
from .ensemble_config import MembersConfig
from .finetune_config import FineTuneConfig
from .heads import copy_heads, load_head, reinit_head_, save_head, set_labels_
from .stage import RunContext, config_dict
from .task import Split, Task

MEMBERS_DIR = "members"
DEV_LOGITS = "dev_logits.npy"  # (N_dev, C) float32, written into each member when it is trained


@dataclass
class Member:
    artifact: Artifact
    config: FineTuneConfig
    cached: bool

    @property
    def dev_accuracy(self) -> float:
        return float(self.artifact.manifest["train"]["dev_accuracy"])

    def dev_logits(self) -> np.ndarray:
        """The member's logits on the dev split, computed once when it was trained (every
        combining stage weighs or sorts members by them without running K models again)."""
        return np.load(self.artifact.path / DEV_LOGITS)


def parent_key(parent: Artifact) -> str:
    return parent.manifest.get("key") or dir_hash(parent.path)


def members_root(out_dir: Path) -> Path:
    """Where members live: beside the stage artifacts (``out_dir`` is the stage's staging
    directory inside ``OUT/artifacts``), so they outlive a failed or killed stage."""
    return Path(out_dir).resolve().parent / MEMBERS_DIR


def _cached(dest: Path) -> Artifact | None:
    if dest.is_dir() and verify(dest) is None:
        return Artifact.load(dest)
    return None


def _shared_start(parent: Artifact, cfg: MembersConfig, task: Task, root: Path, ctx: RunContext) -> Artifact:
    """The parent itself if it already has a head for ``task``, else the parent with one
    fresh head (seeded by ``head_seed``) saved as ``task``'s head."""
    own = (parent.manifest.get("task") or {}).get("name")
    if load_head(parent.path, task.name) is not None or (own == task.name
                                                          and parent.manifest.get("num_labels") == task.num_labels):
        return parent
    key = stage_key(parent_key(parent), "ensemble-init", {"head_seed": cfg.head_seed}, task.fingerprint())
    dest = root / f"init-{key}"
    art = _cached(dest)
    if art is not None:
        return art
    from transformers import set_seed

    from .model import load_model, load_tokenizer

    set_seed(cfg.head_seed)
    model = load_model(parent, num_labels=task.num_labels, trust_remote_code=ctx.trust_remote_code)
    reinit_head_(model)
    names = task.label_names()
    set_labels_(model, names, task.num_labels)
    with staging_dir(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(parent, ctx.trust_remote_code).save_pretrained(tmp)
        copy_heads(parent.path, tmp, skip=task.name)
        save_head(model, tmp, task.name, labels=names)
        write_manifest(tmp, stage="ensemble-init", stage_type="ensemble-init", key=key, parent=str(parent.path),
                       format="hf", num_labels=task.num_labels, labels=names, head_seed=cfg.head_seed)
    return Artifact.load(dest)


def train_members(parent: Artifact, cfg: MembersConfig, out_dir: Path, ctx: RunContext, stage: str) -> list[Member]:
    """Every member of ``cfg``, reusing each one already trained (same key) from the cache."""
    from .finetune import FineTune

    root = members_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    clean_stale(root)  # a member killed mid-training left a .tmp-* directory; never read
    task = cfg.get_task()
    start = _shared_start(parent, cfg, task, root, ctx)
    start_key = parent_key(start)
    out = []
    for i, mcfg in enumerate(cfg.member_configs()):
        key = stage_key(start_key, "finetune", FineTune.key_config(mcfg), task.fingerprint(), FineTune.not_in_key)
        dest = root / f"member-{key}"
        art = _cached(dest)
        if art is not None:
            ctx.log(f"stage {stage}: member {i + 1}/{len(cfg.members)} cached ({dest.name})")
            out.append(Member(art, mcfg, True))
            continue
        ctx.log(f"stage {stage}: training member {i + 1}/{len(cfg.members)} ({cfg.members[i]})")
        with staging_dir(dest) as tmp:
            fields = FineTune(config=mcfg, name=f"{stage}-m{i}").run(start, tmp, ctx)
            _save_dev_logits(tmp, cfg, ctx)
            write_manifest(tmp, stage=f"{stage}-m{i}", stage_type="finetune", key=key, parent=str(start.path),
                           config=config_dict(mcfg), **fields)
        out.append(Member(Artifact.load(dest), mcfg, False))
    return out


def _save_dev_logits(model_dir: Path, cfg: MembersConfig, ctx: RunContext) -> None:
    from .model import load_model, load_tokenizer

    art = Artifact(Path(model_dir), {"format": "hf"})
    dev = dev_split(cfg)
    logits = logits_on(load_model(art, trust_remote_code=ctx.trust_remote_code),
                       load_tokenizer(art, ctx.trust_remote_code), dev.texts, cfg.member_configs()[0].max_length)
    np.save(Path(model_dir) / DEV_LOGITS, logits)


def member_summary(members: list[Member]) -> list[dict]:
    return [{"dir": str(m.artifact.path), "key": m.artifact.manifest.get("key"), "seed": m.config.seed,
             "learning_rate": m.config.learning_rate, "dev_accuracy": m.dev_accuracy, "cached": m.cached}
            for m in members]


def dev_split(cfg: MembersConfig) -> Split:
    """The dev split the members were selected on (the fine-tune stage's own dev set)."""
    from .finetune_config import train_dev

    mcfg = cfg.member_configs()[0]
    return train_dev(mcfg.get_task(), mcfg)[1]


def logits_on(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    """(N, num_labels) logits of ``model`` on ``texts``, in order."""
    from .predict import encode_batches, torch_predictor

    pred = torch_predictor(model, "member")
    out = None
    for idx, enc in encode_batches(tokenizer, texts, batch_size, max_length, sort_by_length=True):
        logits = pred(enc)
        if out is None:
            out = np.zeros((len(texts), logits.shape[-1]), dtype=np.float32)
        out[idx] = logits
    return out


def link_member(member: Artifact, dst: Path) -> None:
    """Hard-link a member's model files under ``dst`` (its weights carry its head)."""
    dst.mkdir(parents=True)
    link_files(member.path, dst)

"""Train/eval text overlap between a chain's tasks (contamination check).

Public corpora share sentences: Subj's subjective half and SST both come from Rotten
Tomatoes snippets, so a chain that fine-tunes on Subj before SST-2 trains on some SST-2
test sentences (with subjectivity labels, not sentiment ones). Every score of the chain
on a later task should say how many of that task's evaluation sentences an earlier stage
trained on; this module counts them, exactly as each stage's training set is built
(same subsample, same seed), after case and whitespace normalisation.
"""
from __future__ import annotations

from .spec import ChainSpec
from .task import Task, normalize_text as normalize


def train_texts(config) -> set[str]:
    """The texts a fine-tune stage trains on (its subsample included), normalised."""
    from .finetune_config import train_dev

    task = config.get_task()
    train, _ = train_dev(task, config)
    return {normalize(t) for t in train.texts}


def eval_texts(task: Task, split: str) -> set[str]:
    return {normalize(t) for t in task.load(split).texts} if task.has_split(split) else set()


def train_eval_overlap(spec: ChainSpec) -> list[dict]:
    """One row per (fine-tune stage, evaluated task) pair that shares at least one text:
    how many of the task's ``spec.eval.split`` texts the stage trained on."""
    evals = {name: eval_texts(spec.tasks[name], spec.eval.split)
             for name in dict.fromkeys(s.task for s in spec.stages if s.task)}
    rows = []
    for st in spec.stages:
        if not st.stage_cls.trains_on_task or st.task is None:
            continue
        seen = train_texts(st.config)
        for name, texts in evals.items():
            n = len(seen & texts)
            if n:
                rows.append({"stage": st.name, "train_task": st.task, "eval_task": name, "split": spec.eval.split,
                             "shared": n, "eval_size": len(texts), "fraction": round(n / len(texts), 4)})
    return rows

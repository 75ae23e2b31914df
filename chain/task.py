"""Text-classification tasks read from TSV, CSV or JSONL files, or a ``datasets`` directory.

A ``Task`` is pure data (file paths, column names, label names), so it round-trips into
an artifact manifest; ``Task.load(split)`` reads and validates one split; ``check()``
reads every split and refuses label sets a model cannot learn (a test label never seen
in train), so a chain fails on bad data before any training starts. Labels may be
integer ids or names; ``label_space()`` fixes their order (``chain.labels``) and
``id2label()`` is what a fine-tuned model's config records.

>>> task = builtin_task("sst2")
>>> texts, labels = task.load("test")   # 1821 sentences
>>> task.id2label()
{0: 'negative', 1: 'positive'}
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .datafiles import Rows, classlabel_names, dataset_rows, dataset_split_names, load_dataset_split, read_file
from .errors import DataError, SpecError
from .labels import LabelSpace, classlabel_space, explicit_space, infer_space
DATA_DIR = Path(__file__).parent / "data"
SPLITS = ("train", "dev", "test")


def normalize_text(text: str) -> str:
    """The form in which texts are compared across tasks (overlap, decontamination)."""
    return re.sub(r"\s+", " ", text).strip().casefold()


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int) -> "Split":
        return Split(self.texts[:n], self.labels[:n])


@dataclass
class Task:
    name: str
    files: dict[str, str]  # split -> path; a split may be derived by ``holdout``
    # Number of classes; inferred from ``labels`` or from the names in the data if omitted
    # (integer ids need it), checked against both if given.
    num_labels: int | None = None
    text_column: str = "sentence"
    label_column: str = "label"
    # Corpora without an official split (Subj): carve dev/test from "all" with a seeded holdout;
    # with a `train` file and no `all`, the holdout (e.g. {"dev": 0.1}) is carved from train.
    holdout: dict[str, float] = field(default_factory=dict)
    holdout_seed: int = 13
    # A ``DatasetDict`` saved with ``save_to_disk``, instead of ``files``; ``splits`` maps
    # chainpress' split names to the dataset's ({"dev": "validation"} is the default).
    dataset: str | None = None
    splits: dict[str, str] = field(default_factory=dict)
    # Class names in id order, e.g. ["negative", "positive"]: the data may use these names
    # or ids into this list. None: a ClassLabel's names, else the sorted names in train.
    labels: list[str] | None = None

    def __post_init__(self) -> None:
        n = self.num_labels
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 2):
            raise SpecError(f"task {self.name!r}: num_labels must be an integer >= 2, got {n!r}")
        if self.dataset and self.files:
            raise SpecError(f"task {self.name!r}: give either `files` or `dataset`, not both")
        if not self.dataset and not self.files:
            raise SpecError(f"task {self.name!r}: give `files` (split -> TSV/CSV/JSONL path) or `dataset` "
                            "(a directory written by datasets' save_to_disk)")
        unknown = (set(self.files) | set(self.splits)) - set(SPLITS) - {"all"}
        if unknown:
            raise SpecError(f"task {self.name!r}: unknown split(s) {sorted(unknown)}; use {SPLITS}")
        if self.labels is not None:
            self.labels = _check_names(self.name, self.labels)
            if n is not None and n != len(self.labels):
                raise SpecError(f"task {self.name!r}: num_labels is {n} but `labels` names {len(self.labels)} "
                                "classes; drop num_labels or make them agree")
            self.num_labels = len(self.labels)
        if self.num_labels is None:  # a deterministic function of the files, so to_dict() stays stable
            self.num_labels = self.label_space().num_labels

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Task":
        return cls(**d)

    def fingerprint(self) -> str:
        """Hash of the task definition and its file contents (for caching and manifests).

        Explicit ``labels`` are part of the definition, inferred ones a function of the train
        file: either way a different label order gives a different fingerprint. Where the
        files lie is not part of it (their bytes are), so a moved clone or data folder keeps
        its cache: a checkout at another path once retrained SST-5 from nothing."""
        d = {**self.to_dict(), "files": sorted(self.files), "dataset": bool(self.dataset)}
        h = hashlib.sha256(json.dumps(d, sort_keys=True).encode())
        paths = [(s, Path(self.files[s])) for s in sorted(self.files)]
        if self.dataset:
            root = Path(self.dataset)
            paths = [(str(p.relative_to(root)), p) for p in sorted(root.rglob("*")) if p.is_file()] \
                if root.is_dir() else [(root.name, root)]
        for name, p in paths:
            h.update(name.encode() + b"\0")
            h.update(p.read_bytes() if p.exists() else b"<missing>")
        return h.hexdigest()[:16]

    # ---- labels ---------------------------------------------------------------------------

    def label_space(self) -> LabelSpace:
        """How this task's label values map to ids (reads the train split unless ``labels``
        are given or a ClassLabel names them)."""
        try:
            return self._space()
        except DataError as e:
            raise DataError(f"task {self.name!r}: {e}") from None

    def label_names(self) -> list[str] | None:
        """Class names in id order, or None for integer ids without names."""
        names = self.label_space().names
        return list(names) if names is not None else None

    def id2label(self) -> dict[int, str]:
        """``{id: name}`` for a model config (``LABEL_i`` where the data gives no names)."""
        return self.label_space().id2label()

    def _space(self, train: tuple[list, list[int], str, str] | None = None,
               other: tuple[list, list[int], str, str] | None = None) -> LabelSpace:
        """``train``: the train split's raw labels if already read; ``other``: those of the split
        being loaded, which stand in for train in an evaluation-only task (integer ids only)."""
        train_split = self._dataset_splits().get("train") if self.dataset else None
        if train_split is not None:
            names = classlabel_names(load_dataset_split(Path(self.dataset), train_split), self.label_column)
            if names is not None:
                return classlabel_space(names, self.labels, f"{self.dataset}[{train_split}]")
        if self.labels is not None:
            return explicit_space(self.labels)
        if train is None and self.has_split("train"):
            train = self._columns(self._raw("train"))[1:]
        space = infer_space(*(train or other), self.num_labels) if (train or other) else None
        if space is None or (train is None and space.names is not None):
            raise DataError("there is no train split to read the label names from; give a `train` (or `all`) "
                            "file, or list the names (in the model's id order) in `labels`")
        return space

    # ---- reading ----------------------------------------------------------------------------

    def has_split(self, split: str) -> bool:
        if self.dataset:
            return split in self._dataset_splits()
        return split in self.files or split in self.holdout or (split == "train" and "all" in self.files)

    def load(self, split: str) -> Split:
        try:
            texts, values, lines, where, unit = self._columns(self._raw(split))
            raw = (values, lines, where, unit)
            space = self._space(raw if split == "train" else None, other=raw)
            return Split(texts, space.ids(values, lines, where, unit))
        except DataError as e:
            raise DataError(f"task {self.name!r}: {e}") from None

    def _raw(self, split: str) -> Rows:
        if self.dataset:
            return self._read_dataset(split)
        # a holdout carves its splits from `all`, else from `train` (TREC's dev)
        pool = "all" if "all" in self.files else "train"
        carved = self.holdout and pool in self.files and (split in self.holdout or split == "train")
        if split in self.files and not (carved and split == pool):
            return read_file(Path(self.files[split]))
        if carved:
            full = read_file(Path(self.files[pool]))
            idx = self._holdout_indices(len(full.records))[split]
            if not idx and full.records:
                raise DataError(f"{full.where} has {len(full.records)} example(s), too few to hold out "
                                f"{self.holdout.get(split, 0):g} of them as the {split!r} split; give a {split} "
                                "file in `files`")
            return Rows(full.where, full.unit, [full.records[i] for i in idx], [full.lines[i] for i in idx])
        raise DataError(f"no {split!r} split; give a file for it in `files`")

    def _holdout_indices(self, n_rows: int) -> dict[str, list[int]]:
        order = list(range(n_rows))
        random.Random(self.holdout_seed).shuffle(order)
        start, parts = 0, {}
        for name in sorted(self.holdout):  # "dev", "test": stable order
            n = int(round(self.holdout[name] * n_rows))
            if self.holdout[name] > 0 and n_rows - start >= 2:  # a tiny file still gets one example
                n = min(max(n, 1), n_rows - start - 1)
            parts[name] = sorted(order[start:start + n])
            start += n
        parts["train"] = sorted(order[start:])
        return parts

    def check(self) -> dict[str, int]:
        """Read every split; raise ``DataError`` on anything a fine-tune would trip over
        (the first of ``problems()``). Returns the number of examples per split."""
        sizes, problems = self._survey()
        if problems:
            raise DataError(problems[0])
        return sizes

    def problems(self) -> list[str]:
        """Every problem ``check()`` would raise, one line each: at most one per split (its
        first bad line), then the checks across splits. For a validator that reports all."""
        return self._survey()[1]

    def _survey(self) -> tuple[dict[str, int], list[str]]:
        sizes, label_sets, problems, failed = {}, {}, [], set()
        pool = "all" if "all" in self.files else "train"
        for split in SPLITS:
            if self.has_split(split):
                if split in self.holdout and pool in failed:
                    continue  # carved from a file whose problem is already said
                try:
                    data = self.load(split)
                except DataError as e:  # the same label-space error can reach every split once
                    problems += [str(e)] if str(e) not in problems else []
                    failed.add(split)
                    continue
                sizes[split], label_sets[split] = len(data), set(data.labels)
        if not self.has_split("train"):
            problems.append(f"task {self.name!r} has no train split; give a `train` (or `all`) file")
        if not self.has_split("test"):
            problems.append(f"task {self.name!r} has no test split; give a `test` file or a `holdout` for it")
        if "train" not in label_sets:
            return sizes, problems
        names = self.id2label()
        if len(label_sets["train"]) < 2:
            problems.append(f"task {self.name!r}: the train split has a single label "
                            f"{[names[i] for i in sorted(label_sets['train'])]}; a classifier needs at least two")
        for split in ("dev", "test"):
            unseen = label_sets.get(split, set()) - label_sets["train"]
            if unseen:
                shown = sorted(unseen) if self.label_names() is None else [names[i] for i in sorted(unseen)]
                problems.append(f"task {self.name!r}: label(s) {shown} occur in the {split} split but never "
                                "in train; the model cannot learn them (fix the split or the labels)")
        return sizes, problems

    def _dataset_splits(self) -> dict[str, str]:
        """chainpress split -> the saved DatasetDict's split name."""
        names = dataset_split_names(Path(self.dataset))
        default = {s: s for s in SPLITS if s in names}
        if "dev" not in default and "validation" in names:
            default["dev"] = "validation"
        return {**default, **self.splits}

    def _read_dataset(self, split: str) -> Rows:
        root = Path(self.dataset)
        if not (root / "dataset_dict.json").is_file():
            raise DataError(f"{root} is not a datasets directory (no dataset_dict.json); "
                            "write it with DatasetDict.save_to_disk")
        mapping = self._dataset_splits()
        if split not in mapping:
            raise DataError(f"no {split!r} split in {root}; map one in `splits`")
        return dataset_rows(load_dataset_split(root, mapping[split]), f"{root}[{mapping[split]}]")

    def _columns(self, rows: Rows) -> tuple[list[str], list, list[int], str, str]:
        """(texts, raw label values, lines, where, unit), every record checked for both columns."""
        if not rows.records:
            raise DataError(f"{rows.where} has no data rows; give a file with a header and examples")
        cols = sorted(map(str, rows.records[0]))
        for col, role in ((self.text_column, "text_column"), (self.label_column, "label_column")):
            if col not in rows.records[0]:
                raise DataError(f"{rows.where} has no column {col!r} (columns: {cols}); set `{role}`")
        texts, values = [], []
        for rec, line in zip(rows.records, rows.lines):
            for col in (self.text_column, self.label_column):
                if col not in rec:
                    raise DataError(f"{rows.where} {rows.unit} {line} has no field {col!r}; every example needs "
                                    f"{self.text_column!r} and {self.label_column!r}")
            text = rec[self.text_column]
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{rows.where} {rows.unit} {line}: "
                                f"{'empty' if text is None or isinstance(text, str) else 'non-string'} text in "
                                f"column {self.text_column!r}")
            texts.append(text)
            values.append(rec[self.label_column])
        return texts, values, rows.lines, rows.where, rows.unit


def _check_names(task: str, labels) -> list[str]:
    if not isinstance(labels, (list, tuple)):
        raise SpecError(f"task {task!r}: `labels` must be a list of class names in id order, got {labels!r}")
    names = []
    for x in labels:
        if isinstance(x, bool) or not isinstance(x, (str, int)) or not str(x).strip():
            raise SpecError(f"task {task!r}: `labels` holds {x!r}; each label is a non-empty name")
        names.append(str(x).strip())
    if len(names) < 2:
        raise SpecError(f"task {task!r}: `labels` names {len(names)} class(es); a classifier needs at least two")
    dupes = sorted({x for x in names if names.count(x) > 1})
    if dupes:
        raise SpecError(f"task {task!r}: `labels` repeats {dupes}; each class is named once")
    return names


def _builtin(name: str, labels: list[str], files: dict[str, str], **kw) -> Task:
    return Task(name, {s: str(DATA_DIR / name / f) for s, f in files.items()}, labels=labels, **kw)


# Label names as chain/data/README.md gives them (the ids in the files are unchanged).
BUILTIN = {
    "sst2": lambda: _builtin("sst2", ["negative", "positive"], {s: f"{s}.tsv" for s in SPLITS}),
    "sst5": lambda: _builtin("sst5", ["very negative", "negative", "neutral", "positive", "very positive"],
                             {s: f"{s}.tsv" for s in SPLITS}),
    "subj": lambda: _builtin("subj", ["subjective", "objective"], {"all": "all.tsv"},
                             holdout={"dev": 0.1, "test": 0.1}),
    # no official dev split: a seeded 10% of train, so gates and model selection never read test
    "trec": lambda: _builtin("trec", ["DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"],
                             {"train": "train.tsv", "test": "test.tsv"}, holdout={"dev": 0.1}),
}


def builtin_task(name: str) -> Task:
    if name not in BUILTIN:
        raise SpecError(f"unknown built-in task {name!r}; choose one of {sorted(BUILTIN)} or give files")
    return BUILTIN[name]()

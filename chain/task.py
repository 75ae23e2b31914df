"""Text-classification tasks read from TSV, CSV or JSONL files, or a ``datasets`` directory.

A ``Task`` is pure data (file paths, column names, label count), so it round-trips into
an artifact manifest; ``Task.load(split)`` reads and validates one split; ``check()``
reads every split and refuses label sets a model cannot learn (a test label never seen
in train), so a chain fails on bad data before any training starts.

>>> task = builtin_task("sst2")
>>> texts, labels = task.load("test")   # 1821 sentences
"""
from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import DataError, SpecError

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
    num_labels: int
    text_column: str = "sentence"
    label_column: str = "label"
    # Corpora without an official split (Subj): carve dev/test from "all" with a seeded holdout.
    holdout: dict[str, float] = field(default_factory=dict)
    holdout_seed: int = 13
    # A ``DatasetDict`` saved with ``save_to_disk``, instead of ``files``; ``splits`` maps
    # chainpress' split names to the dataset's ({"dev": "validation"} is the default).
    dataset: str | None = None
    splits: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.num_labels, bool) or not isinstance(self.num_labels, int) or self.num_labels < 2:
            raise SpecError(f"task {self.name!r}: num_labels must be an integer >= 2, got {self.num_labels!r}")
        if self.dataset and self.files:
            raise SpecError(f"task {self.name!r}: give either `files` or `dataset`, not both")
        if not self.dataset and not self.files:
            raise SpecError(f"task {self.name!r}: give `files` (split -> TSV/CSV/JSONL path) or `dataset` "
                            "(a directory written by datasets' save_to_disk)")
        unknown = (set(self.files) | set(self.splits)) - set(SPLITS) - {"all"}
        if unknown:
            raise SpecError(f"task {self.name!r}: unknown split(s) {sorted(unknown)}; use {SPLITS}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Task":
        return cls(**d)

    def fingerprint(self) -> str:
        """Hash of the task definition and its file contents (for caching and manifests)."""
        h = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode())
        paths = [Path(self.files[s]) for s in sorted(self.files)]
        if self.dataset:
            root = Path(self.dataset)
            paths = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for p in paths:
            h.update(p.read_bytes() if p.exists() else b"<missing>")
        return h.hexdigest()[:16]

    def has_split(self, split: str) -> bool:
        if self.dataset:
            return split in self._dataset_splits()
        return split in self.files or split in self.holdout or (split == "train" and "all" in self.files)

    def load(self, split: str) -> Split:
        if self.dataset:
            return self._read_dataset(split)
        if split in self.files:
            return self._read(Path(self.files[split]))
        if "all" in self.files and (split in self.holdout or split == "train"):
            return self._holdout_split(split)
        raise DataError(f"task {self.name!r} has no {split!r} split; give a file for it in `files`")

    def _holdout_split(self, split: str) -> Split:
        full = self._read(Path(self.files["all"]))
        order = list(range(len(full)))
        random.Random(self.holdout_seed).shuffle(order)
        start, parts = 0, {}
        for name in sorted(self.holdout):  # "dev", "test": stable order
            n = int(round(self.holdout[name] * len(full)))
            parts[name] = order[start:start + n]
            start += n
        parts["train"] = order[start:]
        idx = sorted(parts[split])
        return Split([full.texts[i] for i in idx], [full.labels[i] for i in idx])

    def check(self) -> dict[str, int]:
        """Read every split; raise ``DataError`` on anything a fine-tune would trip over.

        Returns the number of examples per split.
        """
        sizes, label_sets = {}, {}
        for split in SPLITS:
            if self.has_split(split):
                data = self.load(split)
                sizes[split], label_sets[split] = len(data), set(data.labels)
        if "train" not in sizes:
            raise DataError(f"task {self.name!r} has no train split; give a `train` (or `all`) file")
        if "test" not in sizes:
            raise DataError(f"task {self.name!r} has no test split; give a `test` file or a `holdout` for it")
        if len(label_sets["train"]) < 2:
            raise DataError(f"task {self.name!r}: the train split has a single label {sorted(label_sets['train'])}; "
                            "a classifier needs at least two")
        for split in ("dev", "test"):
            unseen = label_sets.get(split, set()) - label_sets["train"]
            if unseen:
                raise DataError(f"task {self.name!r}: label(s) {sorted(unseen)} occur in the {split} split but never "
                                "in train; the model cannot learn them (fix the split or the labels)")
        return sizes

    def _dataset_splits(self) -> dict[str, str]:
        """chainpress split -> the saved DatasetDict's split name."""
        info = Path(self.dataset) / "dataset_dict.json"
        names = json.loads(info.read_text()).get("splits", []) if info.is_file() else []
        default = {s: s for s in SPLITS if s in names}
        if "dev" not in default and "validation" in names:
            default["dev"] = "validation"
        return {**default, **self.splits}

    def _read_dataset(self, split: str) -> Split:
        root = Path(self.dataset)
        if not (root / "dataset_dict.json").is_file():
            raise DataError(f"task {self.name!r}: {root} is not a datasets directory (no dataset_dict.json); "
                            "write it with DatasetDict.save_to_disk")
        mapping = self._dataset_splits()
        if split not in mapping:
            raise DataError(f"task {self.name!r} has no {split!r} split in {root}; map one in `splits`")
        from datasets import load_from_disk

        try:
            ds = load_from_disk(str(root))[mapping[split]]
        except KeyError:
            raise DataError(f"task {self.name!r}: {root} has no split {mapping[split]!r}; "
                            f"check `splits`") from None
        return self._validate(ds.to_list(), f"{root}[{mapping[split]}]")

    def _read(self, path: Path) -> Split:
        if not path.is_file():
            raise DataError(f"task {self.name!r}: data file {path} not found; check the path in the task's `files`")
        return self._validate(_read_rows(path), str(path))

    def _validate(self, rows: list[dict], path: str) -> Split:
        if not rows:
            raise DataError(f"task {self.name!r}: {path} has no data rows; give a file with a header and examples")
        cols = set(rows[0])
        for col, role in ((self.text_column, "text_column"), (self.label_column, "label_column")):
            if col not in cols:
                raise DataError(
                    f"task {self.name!r}: {path} has no column {col!r} (columns: {sorted(cols)}); set `{role}`")
        texts, labels = [], []
        for i, row in enumerate(rows, start=2):
            raw = row[self.label_column]
            try:
                if isinstance(raw, float) and not raw.is_integer():
                    raise ValueError(raw)
                label = int(raw)
            except (TypeError, ValueError):
                raise DataError(f"task {self.name!r}: {path} line {i}: label {raw!r} is not an integer id") from None
            if not 0 <= label < self.num_labels:
                raise DataError(f"task {self.name!r}: {path} line {i}: label {label} is outside "
                                f"0..{self.num_labels - 1}; fix the data or set num_labels")
            text = row[self.text_column]
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"task {self.name!r}: {path} line {i}: empty text in column {self.text_column!r}")
            texts.append(text)
            labels.append(label)
        return Split(texts, labels)


def _read_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        with path.open(encoding="utf-8", newline="") as f:
            if suffix == ".jsonl":
                return [json.loads(line) for line in f if line.strip()]
            delim = "," if suffix == ".csv" else "\t"
            return list(csv.DictReader(f, delimiter=delim, quoting=csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} cannot be parsed as {suffix or 'TSV'} ({e}); give UTF-8 TSV/CSV/JSONL") from None


def _builtin(name: str, num_labels: int, files: dict[str, str], **kw) -> Task:
    return Task(name, {s: str(DATA_DIR / name / f) for s, f in files.items()}, num_labels, **kw)


BUILTIN = {
    "sst2": lambda: _builtin("sst2", 2, {s: f"{s}.tsv" for s in SPLITS}),
    "sst5": lambda: _builtin("sst5", 5, {s: f"{s}.tsv" for s in SPLITS}),
    "subj": lambda: _builtin("subj", 2, {"all": "all.tsv"}, holdout={"dev": 0.1, "test": 0.1}),
    "trec": lambda: _builtin("trec", 6, {"train": "train.tsv", "test": "test.tsv"},
                             holdout={}),
}


def builtin_task(name: str) -> Task:
    if name not in BUILTIN:
        raise SpecError(f"unknown built-in task {name!r}; choose one of {sorted(BUILTIN)} or give files")
    return BUILTIN[name]()

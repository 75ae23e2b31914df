"""Label spaces: how a task's raw label values become class ids, and what each id is called.

Data arrives with integer ids (``0``/``1``), names (``positive``/``negative``) or a
``datasets`` ClassLabel (ids plus names). Every form ends as ids ``0..n-1`` in one
recorded order, so ``id2label`` in a saved model names the classes the way the data did:

- ``labels: [neg, pos]`` in the task: that order; values may be the names, or ids into it;
- a ClassLabel column: its names, in its order;
- names in the data, no ``labels``: the sorted set of the train split's names (stable
  across runs and machines, unlike first-seen order);
- integer ids, no names: ``num_labels`` must say how many (``LABEL_i`` in the config).

>>> space = infer_space(["pos", "neg", "pos"], [2, 3, 4], "train.csv", "line", None)
>>> space.names, space.ids(["neg", "pos"], [2, 3], "test.csv", "line")
(('neg', 'pos'), [0, 1])
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import DataError

ACCEPTS = ("ids", "names", "either")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _number(value) -> float | None:
    """``value`` as a number (7, 7.5, "7", "7.0" as pandas writes ids), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return None


def as_int(value) -> int | None:
    """The integer id ``value`` spells (7, 7.0, "7", "7.0"), or None if it is not one."""
    x = _number(value)
    if x is None or not math.isfinite(x) or not x.is_integer():
        return None
    return value if isinstance(value, int) else int(x)


def label_key(value) -> str | None:
    """The name ``value`` stands for (stripped), or None for a missing label (None, NaN, "")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    key = value.strip() if isinstance(value, str) else str(value)
    return key or None


def _fractional(value, where: str, unit: str, line: int) -> DataError | None:
    """A score such as 3.8 (a regression data set) is no class: refuse it rather than make it a name."""
    x = _number(value)
    if x is not None and as_int(value) is None:
        return DataError(f"{where} {unit} {line}: label {value!r} is a fractional number; chainpress trains "
                         "classifiers: give integer ids or names")
    return None


def _show(names) -> str:
    names = list(names)
    return str(names) if len(names) <= 8 else f"[{', '.join(map(repr, names[:8]))}, ... ({len(names)} in all)]"


def _missing(where: str, unit: str, line: int) -> DataError:
    return DataError(f"{where} {unit} {line}: no label; every example needs one")


@dataclass(frozen=True)
class LabelSpace:
    num_labels: int
    names: tuple[str, ...] | None  # None: integer ids without names
    accepts: str  # which raw values map: "ids", "names" or "either" (one kind per file)
    source: str  # where the names come from, for messages: "labels", "ClassLabel", "train split"

    def __post_init__(self) -> None:
        assert self.accepts in ACCEPTS and (self.names is None or len(self.names) == self.num_labels)

    def id2label(self) -> dict[int, str]:
        if self.names is None:
            return {i: f"LABEL_{i}" for i in range(self.num_labels)}
        return dict(enumerate(self.names))

    def ids(self, values: list, lines: list[int], where: str, unit: str) -> list[int]:
        """Map raw label values to ids; ``DataError`` naming ``where`` and the line otherwise."""
        index = {n: i for i, n in enumerate(self.names or ())}
        out, first_kind = [], None
        for value, line in zip(values, lines):
            key = label_key(value)
            if key is None:
                raise _missing(where, unit, line)
            if self.accepts != "ids" and key in index:
                kind, label = "name", index[key]
            elif self.accepts != "names" and (n := as_int(value)) is not None:
                if not 0 <= n < self.num_labels:
                    raise DataError(f"{where} {unit} {line}: label {n} is outside 0..{self.num_labels - 1}; "
                                    "fix the data or set num_labels" + (" and labels" if self.names else ""))
                kind, label = "id", n
            else:
                raise _fractional(value, where, unit, line) or self._unknown(value, where, unit, line)
            if first_kind is None:
                first_kind = (kind, line)
            elif kind != first_kind[0]:
                this, other = ("a name", "an integer id") if kind == "name" else ("an integer id", "a name")
                raise DataError(f"{where} {unit} {line}: label {value!r} is {this} but {unit} {first_kind[1]} "
                                f"has {other}; use one kind of label per file")
            out.append(label)
        return out

    def _unknown(self, value, where: str, unit: str, line: int) -> DataError:
        head = f"{where} {unit} {line}: label {value!r}"
        if self.names is None:
            return DataError(f"{head} is not an integer id like the train split's labels; use ids "
                             f"0..{self.num_labels - 1} everywhere, or names everywhere")
        if self.source == "train split":
            return DataError(f"{head} never occurs in the train split (its labels: {_show(self.names)}); "
                             "the model cannot learn it: fix the split or the labels")
        if self.source == "ClassLabel":
            return DataError(f"{head} is not an id of the dataset's ClassLabel {_show(self.names)}")
        return DataError(f"{head} is not one of the task's `labels` {_show(self.names)}; add it there or fix the data")


def explicit_space(labels: list[str]) -> LabelSpace:
    """``labels`` given by the user; values may be names or ids, unless a name looks like an id
    ("1".."5" star ratings): then only names, so "1" can never silently mean id 1."""
    accepts = "names" if any(as_int(n) is not None for n in labels) else "either"
    return LabelSpace(len(labels), tuple(labels), accepts, "labels")


def classlabel_space(names: list[str], labels: list[str] | None, where: str) -> LabelSpace:
    if labels is not None and list(labels) != list(names):
        raise DataError(f"{where}: the dataset's ClassLabel names are {_show(names)} but the task's `labels` are "
                        f"{_show(labels)}; drop `labels` or make them the same list in the same order")
    return LabelSpace(len(names), tuple(names), "ids", "ClassLabel")


def infer_space(values: list, lines: list[int], where: str, unit: str, num_labels: int | None) -> LabelSpace:
    """The label space a train split implies: integer ids (``num_labels`` needed) or sorted names."""
    kinds = []
    for value, line in zip(values, lines):
        if label_key(value) is None:
            raise _missing(where, unit, line)
        if (err := _fractional(value, where, unit, line)) is not None:
            raise err
        kinds.append(as_int(value) is not None)
    if not kinds:
        raise DataError(f"{where} has no data rows; give a file with a header and examples")
    if all(kinds):
        if num_labels is None:
            raise DataError(f"{where}: the labels are integer ids; give `num_labels` (how many classes) "
                            "or `labels` (their names, in id order)")
        return LabelSpace(num_labels, None, "ids", "num_labels")
    if any(kinds):  # report the first line of the minority kind
        odd = kinds.index(not kinds[0]) if kinds.count(kinds[0]) * 2 >= len(kinds) else 0
        raise DataError(f"{where} {unit} {lines[odd]}: label {values[odd]!r} mixes integer ids with names in one "
                        "column; use one kind (names are mapped in `labels` order, else sorted)")
    names = sorted({label_key(v) for v in values})
    if num_labels is not None and num_labels != len(names):
        raise DataError(f"{where}: the train split has {len(names)} label names {_show(names)} but num_labels is "
                        f"{num_labels}; fix num_labels, or list every name (in id order) in `labels`")
    return LabelSpace(len(names), tuple(names), "names", "train split")

"""Read a task's TSV / CSV / JSONL file or saved ``datasets`` split into rows with line numbers.

Everything a user's file can get wrong ends here as one ``DataError`` naming the file,
the line and what to do, never a traceback: empty or binary files, bytes that are not
UTF-8, a JSONL line that is not a JSON object, a CSV field over csv's limit (131,072
characters, almost always an unclosed quote that swallowed the rows after it).
A UTF-8 byte-order mark (Excel's "CSV UTF-8") is accepted.

>>> rows = read_file(Path("chain/data/sst2/test.tsv"))
>>> rows.records[0]["label"], rows.lines[0]
('0', 2)
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError


@dataclass(frozen=True)
class Rows:
    where: str  # the file, or "DIR[split]" for a dataset
    unit: str  # "line" (files) or "row" (datasets), for messages
    records: list[dict]
    lines: list[int]  # each record's line, 1-based (its last one if a quoted field spans lines)


def _text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror}); check the path and its permissions") from None
    if not data.strip():
        raise DataError(f"{path} is empty (no header, no data rows); give a header row and one example per line")
    if b"\x00" in data:
        line = data[:data.index(b"\x00")].count(b"\n") + 1
        raise DataError(f"{path} line {line} holds a NUL byte: the file is binary (compressed? a model file?), "
                        "not UTF-8 TSV/CSV/JSONL text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path} line {line} is not UTF-8 (byte 0x{data[e.start]:02x}); save the file as UTF-8 "
                        "(e.g. iconv -f latin1 -t utf-8)") from None


def _jsonl(path: Path, text: str) -> Rows:
    records, lines = [], []
    for n, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit inside a string
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {n} is not valid JSON ({e.msg}, column {e.colno}); "
                            "JSONL holds one JSON object per line") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path} line {n}: expected a JSON object like {{\"sentence\": \"...\", \"label\": 1}}, "
                            f"got a JSON {type(obj).__name__}")
        records.append(obj)
        lines.append(n)
    return Rows(str(path), "line", records, lines)


def _delimited(path: Path, text: str, delimiter: str) -> Rows:
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL  # TSV: quotes are text
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    records, lines = [], []
    start = 2  # the line after the last complete record: where a broken one begins
    try:
        for row in reader:
            records.append(row)
            lines.append(reader.line_num)
            start = reader.line_num + 1
    except csv.Error as e:
        fmt = "TSV" if delimiter == "\t" else "CSV"
        if "field larger than field limit" in str(e):
            hint = ("usually an unclosed quote that swallowed the lines after it: check the quoting there"
                    if fmt == "CSV" else "shorten the text (a model reads at most max_length tokens of it)")
            raise DataError(f"{path} line {start}: a field is longer than {csv.field_size_limit():,} characters "
                            f"(csv's limit); {hint}") from None
        raise DataError(f"{path} line {start} cannot be parsed as {fmt} ({e})") from None
    return Rows(str(path), "line", records, lines)


def read_file(path: Path) -> Rows:
    """Rows of a .jsonl, .csv or (any other suffix) tab-separated file with a header row."""
    if path.is_dir():
        raise DataError(f"data file {path} is a directory; give the TSV/CSV/JSONL file in `files` "
                        "(or the directory as `dataset` if save_to_disk wrote it)")
    if not path.is_file():
        raise DataError(f"data file {path} not found; check the path in the task's `files`")
    text = _text(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl(path, text)
    return _delimited(path, text, "," if suffix == ".csv" else "\t")


def dataset_split_names(root: Path) -> list[str]:
    """The split names a ``DatasetDict.save_to_disk`` directory lists ([] if it is none)."""
    info = root / "dataset_dict.json"
    if not info.is_file():
        return []
    try:
        names = json.loads(info.read_text(encoding="utf-8")).get("splits", [])
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        raise DataError(f"{info} is not the JSON that DatasetDict.save_to_disk writes; save the dataset again") \
            from None
    return [n for n in names if isinstance(n, str)]


def load_dataset_split(root: Path, split: str):
    """One split of a saved ``DatasetDict`` (a ``datasets.Dataset``)."""
    from datasets import load_from_disk

    try:
        dd = load_from_disk(str(root))
    except FileNotFoundError as e:
        raise DataError(f"{root} cannot be loaded as a saved dataset ({e}); write it with "
                        "DatasetDict.save_to_disk") from None
    except Exception as e:  # noqa: BLE001 - pyarrow/fsspec raise many types for a damaged directory
        detail = " ".join(str(e).split())[:300]  # one line, whatever pyarrow says
        raise DataError(f"{root} cannot be loaded as a saved dataset ({type(e).__name__}: {detail}); "
                        "write it again with DatasetDict.save_to_disk") from None
    if split not in dd:
        raise DataError(f"{root} has no split {split!r} (it has {sorted(dd)}); check `splits`")
    return dd[split]


def classlabel_names(ds, column: str) -> list[str] | None:
    """The names of ``column`` if it is a ``datasets.ClassLabel``, else None."""
    from datasets import ClassLabel

    feature = ds.features.get(column)
    return list(feature.names) if isinstance(feature, ClassLabel) else None


def dataset_rows(ds, where: str) -> Rows:
    records = ds.to_list()
    return Rows(where, "row", records, list(range(1, len(records) + 1)))

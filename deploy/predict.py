"""``predict(bundle, input, output)``: batch prediction over a CSV, TSV or JSONL file.

Length bucketing: texts are sorted by token count and cut into batches, so each batch
is padded only to its own longest text (SST-2 test sentences run from 2 to 60+ tokens:
file-order batches of 32 pad nearly every row to the longest of 32 random ones); rows
are written back in input order. ``bucketing=False`` keeps file order, for comparison.

Resume: after every batch its rows are appended (and fsync'ed) to ``OUTPUT.partial``,
whose first line names the input's and the model's checksums. Run the same command
again after an interruption and only the missing rows are computed; a partial file
from a different input or model is an error, not silently mixed in. The output file
appears, complete, by one rename at the end.

>>> predict(PredictConfig(bundle="out/sst2", input="test.tsv", output="preds.jsonl"))
"""
from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chain.errors import DataError, SpecError
from chain.faults import pause_point

from .bundle import Bundle, sha256_file
from .runtime import Classifier

FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None}


@dataclass
class PredictConfig:
    bundle: str
    input: str
    output: str
    text_column: str | None = None  # default: "text", else "sentence"
    batch_size: int = 32
    bucketing: bool = True
    threads: int = 2
    progress: bool = True
    max_rows: int | None = None
    # heads of a multi-task bundle to write (None or ("all",): every head, own task first);
    # one head: plain pred_label/pred_score columns; several: pred_<task>_label, ...
    tasks: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise SpecError(f"batch_size must be >= 1, got {self.batch_size}")
        for p in (self.input, self.output):
            if Path(p).suffix.lower() not in FORMATS:
                raise SpecError(f"{p}: unknown file type; use .csv, .tsv or .jsonl")
        if self.tasks is not None:
            self.tasks = tuple(self.tasks)
            if not self.tasks or len(set(self.tasks)) != len(self.tasks):
                raise SpecError(f"--task: give each head once, or 'all' (got {list(self.tasks)})")


def select_heads(bundle: Bundle, tasks: tuple[str, ...] | None) -> dict[str, list[str]]:
    """{task: labels} of the heads to predict, in the bundle's order (own task first)."""
    own = bundle.task or "default"
    heads = {t: list(h["labels"]) for t, h in bundle.tasks.items()} or {own: list(bundle.labels)}
    if tasks is None or tasks == ("all",):
        return heads
    unknown = [t for t in tasks if t not in heads]
    if unknown:
        raise SpecError(f"--task {', '.join(unknown)}: the bundle has no such head; its heads: {', '.join(heads)}")
    return {t: heads[t] for t in heads if t in tasks}


def head_probabilities(clf: Classifier, texts: list[str], heads: dict[str, list[str]]) -> np.ndarray:
    """The chosen heads' probabilities side by side, from one encoder pass."""
    if not clf.tasks:
        return clf.probabilities(texts)
    probs = clf.task_probabilities(texts)
    return np.concatenate([probs[t] for t in heads], axis=-1)


def read_rows(path: Path, text_column: str | None, max_rows: int | None = None) -> tuple[list[dict], str]:
    if not path.is_file():
        raise DataError(f"input file {path} not found")
    delim = FORMATS[path.suffix.lower()]
    try:
        with path.open(encoding="utf-8", newline="") as f:
            if delim is None:
                rows = []
                for i, line in enumerate(f, start=1):
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row, dict):
                            raise DataError(f"{path} line {i}: expected a JSON object per line")
                        rows.append(row)
            else:
                rows = list(csv.DictReader(f, delimiter=delim,
                                           quoting=csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL))
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 ({e}); re-encode it") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSONL ({e})") from None
    if not rows:
        raise DataError(f"{path} has no rows")
    rows = rows[:max_rows] if max_rows else rows
    col = text_column or next((c for c in ("text", "sentence") if c in rows[0]), None)
    if col is None or col not in rows[0]:
        raise DataError(f"{path} has no column {text_column or 'text/sentence'!r} (columns: {sorted(rows[0])}); "
                        "give --text-column")
    for i, r in enumerate(rows):
        if None in r:  # csv.DictReader's key for fields beyond the header's
            raise DataError(f"{path} row {i + 1} has more fields than the header ({len(rows[0])} columns); "
                            "quote texts that contain the delimiter")
        if not isinstance(r.get(col), str) or not r[col].strip():
            raise DataError(f"{path} row {i + 1}: empty or missing text in column {col!r}")
    return rows, col


def batches(lengths: list[int], batch_size: int, bucketing: bool) -> list[np.ndarray]:
    """Index batches: by token length (stable, so ties keep file order) or in file order."""
    order = np.argsort(lengths, kind="stable") if bucketing else np.arange(len(lengths))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _partial(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def _load_partial(path: Path, key: dict) -> dict[int, list[float]]:
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return {}
    head = json.loads(lines[0])
    if head != key:
        raise DataError(f"{path} was written for another input, model, text column or set of heads; "
                        "delete it to start over")
    done = {}
    for line in lines[1:]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # the last line of a killed run may be cut; its batch is recomputed
        done[int(rec["i"])] = rec["p"]
    return done


@dataclass
class Job:
    """What both engines (this process, Ray Data) share: the rows, the resume key and file."""
    bundle: Bundle
    rows: list[dict]
    texts: list[str]
    out: Path
    part: Path
    key: dict
    done: dict[int, list[float]]
    heads: dict[str, list[str]]  # task -> labels, what each row's probabilities hold side by side

    @classmethod
    def open(cls, cfg: PredictConfig) -> "Job":
        bundle = Bundle.load(cfg.bundle)
        inp, out = Path(cfg.input), Path(cfg.output)
        if inp.resolve() == out.resolve():
            raise SpecError("--output must differ from --input")
        rows, col = read_rows(inp, cfg.text_column, cfg.max_rows)
        clash = [c for c in rows[0] if c.startswith("pred_")]
        if clash:
            raise DataError(f"input columns {clash} clash with the output's pred_* columns; rename them")
        heads = select_heads(bundle, cfg.tasks)
        key = {"input_sha256": sha256_file(inp), "model_sha256": _model_sha256(bundle.model_file),
               "text_column": col, "max_rows": cfg.max_rows, **({"tasks": list(heads)} if bundle.tasks else {})}
        part = _partial(out)
        return cls(bundle, rows, [r[col] for r in rows], out, part, key, _load_partial(part, key), heads)

    def start(self):
        """The partial file, opened for appending (a fresh one starts with the key line)."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        f = self.part.open("a", encoding="utf-8")
        if not self.done:
            f.seek(0)
            f.truncate()
            f.write(json.dumps(self.key) + "\n")
        return f

    def append(self, f, idx, probs) -> None:
        """One batch's rows, durable before the next batch starts."""
        f.write("".join(json.dumps({"i": int(i), "p": [round(float(x), 7) for x in p]}) + "\n"
                        for i, p in zip(idx, probs)))
        f.flush()
        os.fsync(f.fileno())
        self.done.update({int(i): p for i, p in zip(idx, probs)})

    def finish(self, cfg: PredictConfig, lengths: list[int], resumed: int, t0: float, model_s: float) -> dict:
        if missing := len(self.texts) - len(self.done):
            raise DataError(f"{missing} rows came back without predictions; rerun the same command to resume")
        probs = np.asarray([self.done[i] for i in range(len(self.texts))], dtype=np.float32)
        write_output(self.out, self.rows, probs, self.heads)
        self.part.unlink()
        computed = len(self.texts) - resumed
        return {"rows": len(self.texts), "resumed_rows": resumed, "computed_rows": computed,
                "seconds": round(time.perf_counter() - t0, 3), "model_seconds": round(model_s, 3),
                "texts_per_s": round(computed / model_s, 1) if model_s > 0 and computed else None,
                "bucketing": cfg.bucketing, "batch_size": cfg.batch_size, "output": str(self.out),
                "padded_tokens": padded_tokens(lengths, cfg.batch_size, cfg.bucketing), "tokens": int(sum(lengths)),
                "tasks": list(self.heads)}


def predict(cfg: PredictConfig) -> dict:
    """Predict every row of ``cfg.input`` into ``cfg.output``; return timing and counts."""
    job = Job.open(cfg)
    clf = Classifier(job.bundle, threads=cfg.threads)
    t0 = time.perf_counter()
    lengths = clf.token_lengths(job.texts)
    todo = [b for b in batches(lengths, cfg.batch_size, cfg.bucketing) if not all(int(i) in job.done for i in b)]
    resumed = len(job.done)
    from tqdm import tqdm

    with job.start() as f, tqdm(total=len(job.texts), initial=resumed, unit="text",
                                disable=not cfg.progress, desc="predict") as bar:
        t_model = time.perf_counter()
        for k, b in enumerate(todo):
            job.append(f, b, head_probabilities(clf, [job.texts[i] for i in b], job.heads))
            bar.update(len(b))
            pause_point(f"predict:batch:{k + 1}")  # crash tests stop here (chain/faults.py)
        model_s = time.perf_counter() - t_model
    return job.finish(cfg, lengths, resumed, t0, model_s)


def padded_tokens(lengths: list[int], batch_size: int, bucketing: bool) -> int:
    """Tokens the model actually runs (every row padded to its batch's longest)."""
    return int(sum(len(b) * max(lengths[i] for i in b) for b in batches(lengths, batch_size, bucketing)))


def _columns(row: np.ndarray, heads: dict[str, list[str]]) -> dict:
    """One row's ``pred_*`` fields (``row``: the heads' probabilities side by side): plain names
    for one head, ``pred_<task>_*`` for several."""
    out, i = {}, 0
    for task, labels in heads.items():
        p, i = row[i:i + len(labels)], i + len(labels)
        pre = "pred_" if len(heads) == 1 else f"pred_{task}_"
        k = int(p.argmax())
        out.update({f"{pre}label": labels[k], f"{pre}score": float(p[k]),
                    f"{pre}scores": dict(zip(labels, map(float, p)))})
    return out


def write_output(out: Path, rows: list[dict], probs: np.ndarray, heads: dict[str, list[str]]) -> None:
    """Input rows plus, per head, ``pred_label``, ``pred_score`` (top probability) and per-label
    scores, in input order (a gold ``label`` column in the input is kept as it was)."""
    tmp = out.with_name(f".{out.name}.tmp")
    delim = FORMATS[out.suffix.lower()]
    with tmp.open("w", encoding="utf-8", newline="") as f:
        if delim is None:
            for r, p in zip(rows, probs):
                f.write(json.dumps({**r, **_columns(p, heads)}, ensure_ascii=False) + "\n")
        else:
            def flat(p):  # CSV: the per-label scores as pred[_task]_score_<label> columns
                cols = {}
                for k, v in _columns(p, heads).items():
                    if k.endswith("_scores"):
                        cols.update({f"{k[:-1]}_{lab}": f"{x:.6f}" for lab, x in v.items()})
                    else:
                        cols[k] = f"{v:.6f}" if isinstance(v, float) else v
                return cols
            first = flat(probs[0])
            w = csv.DictWriter(f, fieldnames=list(rows[0]) + list(first), delimiter=delim, extrasaction="ignore",
                               quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
            w.writeheader()
            for r, p in zip(rows, probs):
                w.writerow({**r, **flat(p)})
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)


def _model_sha256(model_file) -> str:
    """The model's hash for the resume key; OpenVINO IR keeps its weights in the .bin beside the .xml."""
    weights = model_file.with_suffix(".bin")
    return sha256_file(model_file) + (sha256_file(weights) if model_file.suffix == ".xml" and weights.is_file() else "")

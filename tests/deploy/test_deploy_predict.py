"""Batch prediction: offline predictions in input order, with or without length buckets,
resumed after kill -9 without recomputing finished batches; bad input -> one line, exit 2."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from deploy.predict import PredictConfig, batches, padded_tokens, predict
from tests.conftest import REPO, SST2

LABELS = ["negative", "positive"]


@pytest.fixture
def sst2_file(tmp_path):
    lines = (SST2 / "test.tsv").read_text().splitlines()[:301]  # header + 300 real test sentences
    p = tmp_path / "in.tsv"
    p.write_text("\n".join(lines) + "\n")
    return p


def texts_of(path):
    with open(path, encoding="utf-8", newline="") as f:
        return [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


@pytest.mark.parametrize("bucketing", [True, False])
def test_predict_equals_offline_in_input_order(bundle_dir, sst2_file, tmp_path, offline, bucketing):
    out = tmp_path / "out.jsonl"
    res = predict(PredictConfig(str(bundle_dir), str(sst2_file), str(out), batch_size=16, bucketing=bucketing,
                                threads=1, progress=False))
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    texts = texts_of(sst2_file)
    want = offline(texts)
    assert [r["sentence"] for r in rows] == texts and res["rows"] == 300 and res["resumed_rows"] == 0
    assert [r["pred_label"] for r in rows] == [LABELS[k] for k in want.argmax(-1)]
    np.testing.assert_allclose([[r["pred_scores"][lab] for lab in LABELS] for r in rows], want, atol=1e-5)
    assert [r["label"] for r in rows] == [ln.split("\t")[0] for ln in sst2_file.read_text().splitlines()[1:]]
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_bucketing_pads_fewer_tokens_and_restores_order():
    lengths = [30, 3, 29, 4, 31, 2, 28, 5]
    assert sorted(int(i) for b in batches(lengths, 3, True) for i in b) == list(range(8))
    assert padded_tokens(lengths, 2, True) < padded_tokens(lengths, 2, False)
    assert [list(b) for b in batches(lengths, 3, False)] == [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_kill_9_then_resume_computes_only_the_rest(bundle_dir, sst2_file, tmp_path, offline):
    out = tmp_path / "out.tsv"
    flag = tmp_path / "flag"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CHAINPRESS_PAUSE_AT": "predict:batch:5",
           "CHAINPRESS_PAUSE_FLAG": str(flag)}
    cmd = [sys.executable, "-m", "deploy", "predict", str(bundle_dir), "--input", str(sst2_file), "--output", str(out),
           "--batch-size", "20", "--threads", "1", "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while not flag.exists():
        assert proc.poll() is None and time.monotonic() - t0 < 120, proc.stderr.read()
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    partial = (tmp_path / "out.tsv.partial").read_text().splitlines()
    assert len(partial) == 1 + 5 * 20  # the key line + five finished batches of 20
    env.pop("CHAINPRESS_PAUSE_AT")
    r = subprocess.run(cmd[:-1], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout[r.stdout.index("{"):])
    assert res["resumed_rows"] == 100 and res["computed_rows"] == 200
    with open(out, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    texts = texts_of(sst2_file)
    assert [x["sentence"] for x in rows] == texts
    assert [x["pred_label"] for x in rows] == [LABELS[k] for k in offline(texts).argmax(-1)]


def test_a_partial_file_from_another_input_is_refused(bundle_dir, sst2_file, tmp_path):
    from chain.errors import DataError

    out = tmp_path / "out.jsonl"
    (tmp_path / "out.jsonl.partial").write_text(json.dumps({"input_sha256": "other"}) + "\n")
    with pytest.raises(DataError, match="another input"):
        predict(PredictConfig(str(bundle_dir), str(sst2_file), str(out), progress=False))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "deploy", "predict", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)


def test_bad_input_is_one_line_and_exit_2(bundle_dir, tmp_path):
    bad_utf8 = tmp_path / "bad.tsv"
    bad_utf8.write_bytes(b"sentence\n\xff\xfe oops\n")
    nocol = tmp_path / "nocol.jsonl"
    nocol.write_text('{"body": "hi"}\n')
    cases = [([str(bundle_dir), "--input", str(tmp_path / "missing.csv"), "--output", str(tmp_path / "o.csv")], "not found"),
             ([str(bundle_dir), "--input", str(bad_utf8), "--output", str(tmp_path / "o.csv")], "not UTF-8"),
             ([str(bundle_dir), "--input", str(nocol), "--output", str(tmp_path / "o.csv")], "--text-column"),
             ([str(bundle_dir), "--input", str(nocol), "--output", str(tmp_path / "o.parquet")], "unknown file type"),
             ([str(tmp_path), "--input", str(nocol), "--output", str(tmp_path / "o.csv")], "not a chainpress bundle"),
             ([str(bundle_dir), "--input", str(nocol)], "--output")]
    for args, message in cases:
        r = run_cli(*args)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


def test_a_row_with_more_fields_than_the_header_is_refused(tmp_path):
    from chain.errors import DataError
    from deploy.predict import read_rows

    p = tmp_path / "in.csv"
    p.write_text("text\na gripping film\nterrible, dull\n")  # an unquoted comma in row 2
    with pytest.raises(DataError, match="row 2 has more fields than the header"):
        read_rows(p, None)
    p.write_text('text\na gripping film\n"terrible, dull"\n')
    assert [r["text"] for r in read_rows(p, None)[0]] == ["a gripping film", "terrible, dull"]

"""benchmarks/recovery_distill.py answers bad input with one line and exit 2, training nothing."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "recovery_distill.py"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("extra,msg", [([], "no results.json"),
                                       (["--variant", "[1]"], "--variant takes JSON objects"),
                                       (["--level", "heads"], "--level takes name=number")])
def test_bad_input_is_one_line_and_exit_2(tmp_path, extra, msg):
    out = tmp_path / "run"
    out.mkdir()
    if msg != "no results.json":
        (out / "results.json").write_text(json.dumps({}))
    r = _run(out, *extra)
    assert r.returncode == 2, r.stderr
    assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (out / "artifacts").exists()  # nothing was trained

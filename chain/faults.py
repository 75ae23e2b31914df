"""Pause points for crash tests: land a ``kill -9`` at an exact moment of a run.

``CHAINPRESS_PAUSE_AT`` holds comma-separated glob patterns of point names; when the run
reaches a matching point it writes the point's name to ``CHAINPRESS_PAUSE_FLAG`` (if set)
and sleeps, so a test can wait for the flag and kill the process right there. Points:

* ``saved:<stage>``: model files written into the staging directory, no manifest yet
* ``manifest:<stage>``: manifest written, staging directory not yet published
* ``rename:<dir>``: staging directory fsync'ed, about to be renamed into place
* ``published:<stage>``: artifact published, not yet evaluated
* ``evaluated:<stage>``: evaluation stored in the manifest, results.json not yet updated

Unset (the default), every point is a no-op.
"""
from __future__ import annotations

import fnmatch
import os
import time
from pathlib import Path


def pause_point(point: str) -> None:
    patterns = os.environ.get("CHAINPRESS_PAUSE_AT")
    if not patterns or not any(fnmatch.fnmatchcase(point, p.strip()) for p in patterns.split(",")):
        return
    flag = os.environ.get("CHAINPRESS_PAUSE_FLAG")
    if flag:
        Path(flag).write_text(point)
    time.sleep(float(os.environ.get("CHAINPRESS_PAUSE_SECONDS", "3600")))

"""One fine-tune stage of the forgetting study, run on an existing parent artifact.

Used for docs/results/forgetting-2026-12-02: the reduced study's Subj artifact was trained
before the `ewc` field joined FineTuneConfig (which changed every cache key), and retraining
it did not fit the session, so the rehearsal SST-5 stage runs here on that artifact with
exactly the config `python -m chain.forgetting` gives it, and is evaluated with the same
EvalConfig. Usage:

    python examples/forgetting_one_stage.py PARENT_ARTIFACT OUT_DIR METHOD [SEED]
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from chain.artifact import Artifact, write_manifest
from chain.evaluate import Evaluator
from chain.finetune import FineTune
from chain.forgetting import parse_method, parse_overrides, variant
from chain.spec import load_spec

OVERRIDES = ["epochs=1", "max_train_samples=1000", "batch_size=8", "max_eval_samples=300",
             'extra_args={eval_strategy: "no", save_strategy: "no", load_best_model_at_end: false}']


def main(parent: str, out: str, method: str, seed: int = 1) -> None:
    spec = variant(load_spec(Path(__file__).with_name("sentiment_chain.yaml")), "sst5", seed,
                   parse_method(method)[1], parse_overrides(OVERRIDES), eval_samples=1000, until="sst5")
    st = spec.stages[-1]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    fields = FineTune(config=st.config, name=st.name).train(Artifact.load(parent), out_dir)
    write_manifest(out_dir, stage=st.name, **fields)
    acc = Evaluator(spec.eval, spec.tasks).accuracy(Artifact.load(out_dir), ["subj", "sst5"])
    row = {"method": method, "seed": seed, "parent": parent, "config": dataclasses.asdict(st.config),
           "test_first_1000": {t: a["accuracy"] for t, a in acc.items()}, "train": fields["train"],
           "wall_s": time.time() - t0}
    (out_dir / "row.json").write_text(json.dumps(row, indent=2, default=str))
    print(json.dumps(row["test_first_1000"]), row["train"].get("rehearsal_examples"), f"{row['wall_s']:.0f}s")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 1)

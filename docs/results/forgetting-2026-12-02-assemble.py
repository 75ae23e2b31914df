"""Assemble docs/results/forgetting-2026-12-02.{md,json} from the artifacts' manifests."""
import json, sys, subprocess
from pathlib import Path
A = Path("/work/runs-forget/study/artifacts")
subj = json.loads((A / "subj-0d11c25c84e1/manifest.json").read_text())
none = json.loads((A / "sst5-78066bf3a853/manifest.json").read_text())
reh_path = Path("/work/runs-forget/reh-sst5-seed1/row.json")
reh = json.loads(reh_path.read_text()) if reh_path.is_file() else None
acc = lambda m: {t: v["accuracy"] for t, v in m["evaluations"].items()}
rows = {"subj stage (3000 Subj sentences, seed 42, shared)": acc(subj),
        "sst5 stage, none (1000 SST-5 sentences, seed 1)": acc(none)}
if reh:
    rows["sst5 stage, rehearsal fraction 0.01 (seed 1)"] = reh["test_first_1000"]
l2 = Path("/work/runs-forget/l2sp-sst5-seed1/row.json")
l2 = json.loads(l2.read_text()) if l2.is_file() else None
if l2:
    rows["sst5 stage, l2sp weight 0.1 (seed 1)"] = l2["test_first_1000"]
out = {"date": "2026-12-02", "split": "test, first 1000 sentences of each task (Subj: all 1000)",
       "rows": rows, "none_train": none["train"], "rehearsal_train": reh and reh["train"], "l2sp_train": l2 and l2["train"],
       "subj_drop_points": {k: 100 * (acc(subj)["subj"] - v["subj"]) for k, v in rows.items() if "sst5" in k}}
Path(sys.argv[1]).write_text(json.dumps(out, indent=2, default=str))
print(json.dumps(out["rows"], indent=1)); print(out["subj_drop_points"])

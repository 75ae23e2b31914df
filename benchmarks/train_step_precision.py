"""Seconds per fine-tune step of all-MiniLM-L6-v2 on SST-2, fp32 against bf16 autocast.

What ``finetune.precision: auto`` rests on: 40 seeded batches of 32 train sentences (max_length
64, length-sorted then shuffled, as Trainer's length grouping gives), embeddings frozen as in
the default chain, AdamW, forward + backward + step timed; the first 5 steps are left out.
Each precision gets a fresh model from the same seed, in the order given, in one process.

    python benchmarks/train_step_precision.py fp32 bf16 fp32 bf16
"""
from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(modes: list[str], threads: int = 2) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bench.spec import default_model_path
    from chain.environment import cpu_flags
    from chain.task import builtin_task

    torch.set_num_threads(threads)
    path = default_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    rng = random.Random(0)
    texts = sorted(rng.sample(builtin_task("sst2").load("train").texts, 32 * 40), key=len)
    batches = [texts[i:i + 32] for i in range(0, len(texts), 32)]
    rng.shuffle(batches)
    encs = [tok(b, truncation=True, max_length=64, padding=True, return_tensors="pt") for b in batches]
    print(f"CPU flags: {', '.join(cpu_flags())}; {threads} threads; "
          f"{sum(e['input_ids'].numel() for e in encs) / len(encs):.0f} tokens per batch")
    for mode in modes:
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        for p in model.bert.embeddings.parameters():
            p.requires_grad = False
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        model.train()
        steps = []
        for e in encs:
            y = torch.randint(0, 2, (e["input_ids"].shape[0],))
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                loss = model(**e, labels=y).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            steps.append(time.perf_counter() - t0)
        print(f"{mode}: median {statistics.median(steps[5:]):.3f} s/step, mean {statistics.mean(steps[5:]):.3f}")


if __name__ == "__main__":
    bad = [m for m in sys.argv[1:] if m not in ("fp32", "bf16")]
    if bad or len(sys.argv) < 2:
        print("usage: python benchmarks/train_step_precision.py fp32|bf16 [fp32|bf16 ...]", file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1:])

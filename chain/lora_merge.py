"""LoRA task vectors on a shared base, merged with peft's TIES / DARE / task arithmetic.

A fine-tune stage with ``lora.merge`` trains its adapter on the chain's shared base (the
parent's own base if the parent was such a stage, else the parent itself), keeps the
adapter as a task vector under ``lora_merge/`` and saves base + merge(every task vector so
far): one plain model whose encoder serves every task's head. Each task's vector is trained
from the same base, so a later task does not overwrite an earlier one's weights; the merge
decides how they share them (the seeds' "merge the results of every task").

The merge functions are peft's (``peft.utils.merge_utils``), applied to each target weight's
full low-rank delta (B @ A * scaling): ``add_weighted_adapter``'s non-SVD modes merge A and B
apart, which peft itself calls a rough approximation, and its SVD modes truncate the rank.
"""
from __future__ import annotations

import json
from pathlib import Path

DIR = "lora_merge"
METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties", "magnitude_prune")
_DENSITY = ("ties", "dare_linear", "dare_ties", "magnitude_prune")  # the methods that prune


def carries_base(path: Path) -> bool:
    """True if ``path`` is an artifact of a merging LoRA stage (it knows its shared base)."""
    return (Path(path) / DIR / "base.safetensors").is_file()


def restore_base_(model, parent: Path) -> int:
    """Put the parent's shared base weights back into ``model`` (loaded from the parent);
    return how many weights were replaced (0: the parent is the base)."""
    if not carries_base(parent):
        return 0
    from safetensors.torch import load_file

    base = load_file(str(Path(parent) / DIR / "base.safetensors"))
    params = dict(model.named_parameters())
    for key, w in base.items():
        if key not in params or params[key].shape != w.shape:
            from .errors import SpecError

            raise SpecError(f"lora.merge: the parent's shared base has {key} {tuple(w.shape)}, the model "
                            f"{tuple(params[key].shape) if key in params else 'no such weight'}; merge LoRA "
                            "stages straight after one another, before pruning")
        params[key].data.copy_(w)
    return len(base)


def task_vector(peft_model, adapter: str = "default") -> dict:
    """{module name in the plain model: (A, B * scaling, fan_in_fan_out)} of a trained adapter."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in peft_model.base_model.model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            a = module.lora_A[adapter].weight.detach().float().cpu().clone()
            b = module.lora_B[adapter].weight.detach().float().cpu() * module.scaling[adapter]
            out[name] = (a, b.clone(), bool(getattr(module, "fan_in_fan_out", False)))
    if not out:
        raise ValueError("the model has no LoRA layers for adapter " + repr(adapter))
    return out


def _delta(a, b, fan_in_fan_out: bool):
    d = b @ a
    return d.T if fan_in_fan_out else d


def merge(vectors: dict[str, dict], method: str, density: float, weight: float, seed: int) -> dict:
    """{module: merged delta} over every task's vector (a module a task has no LoRA on counts
    only the tasks that have one). DARE's random masks are seeded."""
    import torch
    from peft.utils import merge_utils

    if method not in METHODS:
        raise ValueError(f"unknown merge method {method!r}; one of {METHODS}")
    fn = {"task_arithmetic": merge_utils.task_arithmetic, "ties": merge_utils.ties,
          "dare_linear": merge_utils.dare_linear, "dare_ties": merge_utils.dare_ties,
          "magnitude_prune": merge_utils.magnitude_prune}[method]
    names = sorted(set().union(*(v.keys() for v in vectors.values())))
    out = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in names:
            deltas = [_delta(*v[name]) for v in vectors.values() if name in v]
            w = torch.full((len(deltas),), float(weight))
            out[name] = fn(deltas, w, density) if method in _DENSITY else fn(deltas, w)
    return out


def apply_(model, merged: dict) -> None:
    """W = W_base + merged delta, in place, on the plain (unloaded) model."""
    modules = dict(model.named_modules())
    for name, d in merged.items():
        w = modules[name].weight
        w.data.add_(d.to(w.dtype))


def base_weights(model, names) -> dict:
    """The target modules' weights of the plain model before ``apply_`` (the shared base)."""
    modules = dict(model.named_modules())
    return {f"{n}.weight": modules[n].weight.detach().cpu().clone().contiguous() for n in names}


def read_vectors(path: Path) -> dict[str, dict]:
    """{task: vector} stored in an artifact (empty if it carries none)."""
    from safetensors import safe_open

    root = Path(path) / DIR
    meta = root / "merge.json"
    if not meta.is_file():
        return {}
    info = json.loads(meta.read_text())
    out = {}
    for task in info["tasks"]:
        vec = {}
        with safe_open(str(root / "tasks" / f"{task}.safetensors"), "pt") as f:
            for key in f.keys():
                if key.endswith(".lora_A"):
                    name = key[:-len(".lora_A")]
                    vec[name] = (f.get_tensor(key), f.get_tensor(name + ".lora_B"), name in info["fan_in_fan_out"])
        out[task] = vec
    return out


def write(out_dir: Path, base: dict, vectors: dict[str, dict], settings: dict) -> None:
    """``lora_merge/``: the shared base, every task's vector and how they were merged."""
    from safetensors.torch import save_file

    root = Path(out_dir) / DIR
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    save_file(base, str(root / "base.safetensors"))
    fan = set()
    for task, vec in vectors.items():
        tensors = {}
        for name, (a, b, fifo) in vec.items():
            tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"] = a.contiguous(), b.contiguous()
            if fifo:
                fan.add(name)
        save_file(tensors, str(root / "tasks" / f"{task}.safetensors"))
    info = {**settings, "tasks": list(vectors), "fan_in_fan_out": sorted(fan)}
    (root / "merge.json").write_text(json.dumps(info, indent=1))

"""Runtimes: how an artifact runs, keyed by its format and ``runtime`` manifest field.

chain registers the Hugging Face/PyTorch runtime; compress registers ONNX Runtime and
its ``torch-int8`` model format, kernels the fused Triton runtime, bench its peers'
(``torch.compile``). Every consumer (evaluation, gates, bench timing, deploy) asks
``load_predictor`` and gets the same call signature: a tokenized batch in, logits out.

>>> pred = load_predictor(Artifact.load("runs/x/artifacts/onnx-int8-ab12"), threads=2)
>>> pred(batch).argmax(-1)
"""
from __future__ import annotations

from typing import Callable

from .artifact import Artifact
from .errors import ModelError
from .predict import Predictor, hf_predictor
from .registry import load_plugins

PredictorLoader = Callable[[Artifact, int, bool], Predictor]
ModelLoader = Callable[[Artifact, bool], object]

_predictors: dict[tuple[str, str | None], PredictorLoader] = {}
_models: dict[str, ModelLoader] = {}
_timer: list[Callable] = []


def register_runtime(fmt: str, runtime: str | None = None):
    """Decorator: ``fn(artifact, threads, trust_remote_code) -> Predictor`` runs artifacts of
    ``fmt`` whose manifest says ``runtime: <runtime>`` (None: the format's default)."""
    def add(fn: PredictorLoader) -> PredictorLoader:
        _predictors[(fmt, runtime)] = fn
        return fn
    return add


def register_model_format(fmt: str):
    """Decorator: ``fn(artifact, trust_remote_code) -> nn.Module`` loads a PyTorch format."""
    def add(fn: ModelLoader) -> ModelLoader:
        _models[fmt] = fn
        return fn
    return add


def register_timer(fn: Callable) -> Callable:
    """The interleaved timing primitive gates use for ``max_latency_ms`` (bench's)."""
    _timer[:] = [fn]
    return fn


def timer() -> Callable:
    load_plugins()
    if not _timer:
        raise ModelError("no timing primitive is registered (bench's plugin); reinstall chainpress (pip install -e .)")
    return _timer[0]


def model_loader(fmt: str) -> ModelLoader | None:
    load_plugins()
    return _models.get(fmt)


def runtimes(fmt: str) -> list[str | None]:
    """The runtimes registered for artifacts of ``fmt`` (None: the format's default), so a
    caller can time one artifact on each runtime that can run it."""
    load_plugins()
    return sorted((r for f, r in _predictors if f == fmt), key=lambda r: r or "")


def task_output(artifact: Artifact, task: str | None) -> str | None:
    """The graph output holding ``task``'s logits in a multi-task artifact (its manifest's
    ``heads``: {task: {"output": "logits_<task>", ...}}); None: the artifact's own output.
    ``ModelError`` if the artifact serves neither that task nor only its own."""
    own = (artifact.manifest.get("task") or {}).get("name")
    heads = artifact.manifest.get("heads") or {}
    if task is None or (task == own and task not in heads):
        return None
    if task not in heads:
        raise ModelError(f"{artifact.path} has no output for task {task!r}; it serves "
                         f"{sorted(heads) or [own]}")
    return heads[task]["output"]


def load_predictor(artifact: Artifact, threads: int, trust_remote_code: bool = False,
                   runtime: str | None = ..., task: str | None = None) -> Predictor:
    """The artifact's predictor; ``runtime`` (one of ``runtimes(artifact.format)``) overrides
    the manifest's ``runtime`` field; ``task`` selects that task's output of a multi-task
    graph (a runtime-only format: its loader takes ``output=``)."""
    load_plugins()
    output = task_output(artifact, task)
    if runtime is ...:
        runtime = artifact.manifest.get("runtime")
    fn = _predictors.get((artifact.format, runtime))
    if fn is None:
        known = ", ".join(f"{f}" + (f"+{r}" if r else "") for f, r in sorted(_predictors, key=str))
        raise ModelError(f"{artifact.path}: no runtime for format {artifact.format!r}"
                         + (f" with runtime {runtime!r}" if runtime else "") + f"; known: {known}")
    if output is None:
        return fn(artifact, threads, trust_remote_code)
    try:
        return fn(artifact, threads, trust_remote_code, output=output)
    except TypeError as e:
        if "output" not in str(e):
            raise
        raise ModelError(f"{artifact.path}: runtime {runtime or artifact.format!r} cannot select output "
                         f"{output!r} of a multi-task graph; evaluate it on its own task") from None


# chain's own runtime: PyTorch eager, for Hugging Face weights and every registered PyTorch format
register_runtime("hf")(hf_predictor)
register_runtime("torch-int8")(hf_predictor)

# K members averaged (chain.ensemble) and a model with a kNN memory (chain.knn): chain's own formats
from .ensemble_runtime import ensemble_model, ensemble_predictor  # noqa: E402
from .knn import knn_predictor  # noqa: E402

register_runtime("ensemble")(ensemble_predictor)
register_model_format("ensemble")(ensemble_model)
register_runtime("knn")(knn_predictor)

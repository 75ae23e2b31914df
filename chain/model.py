"""Safe model and tokenizer loading.

Weights are read as safetensors only (``use_safetensors=True``: a pickled
``pytorch_model.bin`` is refused, because unpickling runs arbitrary code), and a model
whose config asks for remote code is refused unless the caller passes
``trust_remote_code=True`` explicitly.
"""
from __future__ import annotations

import json
from pathlib import Path

from .artifact import Artifact
from .errors import ModelError

SUPPORTED_NOTE = "chainpress supports encoder models with a sequence-classification head (BERT family)"


def _check_source(path: Path, trust_remote_code: bool) -> dict:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{path} has no config.json; give a Hugging Face model directory")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("auto_map") and not trust_remote_code:
        raise ModelError(f"{path} needs custom code from the model repo; review it, then pass "
                         "--trust-remote-code (trust_remote_code=True) to run it")
    if not any(path.glob("*.safetensors")):
        raise ModelError(f"{path} has no .safetensors weights; chainpress refuses pickled weights "
                         "(convert them with `safetensors` first)")
    return cfg


def load_tokenizer(artifact: Artifact, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(artifact.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a tokenizer from {artifact.path}: {e}") from None


def load_model(artifact: Artifact, num_labels: int | None = None, trust_remote_code: bool = False):
    """The artifact's model as a PyTorch ``nn.Module`` in eval mode.

    ``num_labels`` different from the checkpoint's replaces the classification head with
    a freshly initialised one (the encoder is carried over).
    """
    if artifact.format == "torch-int8":
        from compress.torch_int8 import load_int8

        return load_int8(artifact)
    if artifact.format != "hf":
        raise ModelError(f"{artifact.path} holds a {artifact.format} model, not a PyTorch one")
    from transformers import AutoModelForSequenceClassification

    cfg = _check_source(artifact.path, trust_remote_code)
    kw = {}
    if num_labels is not None:
        kw["num_labels"] = num_labels
        kw["ignore_mismatched_sizes"] = cfg.get("num_labels", len(cfg.get("id2label", {})) or 2) != num_labels
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            artifact.path, use_safetensors=True, trust_remote_code=trust_remote_code, **kw)
    except ValueError as e:  # unknown architecture / no classification head for it
        raise ModelError(f"cannot load {artifact.path} for sequence classification ({e}); {SUPPORTED_NOTE}") from None
    except OSError as e:
        raise ModelError(f"cannot load {artifact.path}: {e}") from None
    return model.eval()

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


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")


def read_config(path: Path) -> dict:
    """``path/config.json`` as a dict; ``ModelError`` naming the file if it is missing or not JSON."""
    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{path} has no config.json; give a Hugging Face model directory")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelError(f"{cfg_path} is not valid JSON ({type(e).__name__}: {e}); restore the model's "
                         "config.json") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{cfg_path} is not a JSON object; restore the model's config.json")
    return cfg


def check_source(path: Path, trust_remote_code: bool, tokenizer: bool = False) -> dict:
    """The model directory's config, after checking it can be loaded safely (and, with
    ``tokenizer``, that it has a tokenizer: a chain's source model must)."""
    cfg = read_config(path)
    if cfg.get("auto_map") and not trust_remote_code:
        raise ModelError(f"{path} needs custom code from the model repo; review it, then pass "
                         "--trust-remote-code (trust_remote_code=True) to run it")
    if not any(path.glob("*.safetensors")):
        raise ModelError(f"{path} has no .safetensors weights; chainpress refuses pickled weights "
                         "(convert them with `safetensors` first)")
    if tokenizer and not any((Path(path) / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); save the "
                         "tokenizer next to the model (tokenizer.save_pretrained(DIR))")
    return cfg


def load_tokenizer(artifact: Artifact, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(artifact.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as e:
        raise ModelError(f"cannot load a tokenizer from {artifact.path}: {e}") from None
    drop_unused_inputs_(tok, artifact.path, trust_remote_code)
    return tok


def drop_unused_inputs_(tok, path: Path, trust_remote_code: bool = False) -> list[str]:
    """Stop ``tok`` returning inputs the model's forward does not take; return what it dropped.

    A BERT tokenizer saved beside a DistilBERT model returns ``token_type_ids``: Trainer
    drops the column, but every direct ``model(**enc)`` (evaluation, pruning scores) fails."""
    import inspect

    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        cls = AutoModelForSequenceClassification._model_mapping[type(cfg)]
    except (OSError, ValueError, KeyError):
        return []  # remote code or an unknown class: leave the tokenizer as it is
    params = inspect.signature(cls.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    names = list(tok.model_input_names)
    kept = [n for n in names if n in params]
    if "input_ids" in kept and kept != names:
        tok.model_input_names = kept
    return [n for n in names if n not in tok.model_input_names]


def load_model(artifact: Artifact, num_labels: int | None = None, trust_remote_code: bool = False):
    """The artifact's model as a PyTorch ``nn.Module`` in eval mode.

    ``num_labels`` different from the checkpoint's replaces the classification head with
    a freshly initialised one (the encoder is carried over).
    """
    if artifact.format != "hf":
        from .runtime import model_loader

        loader = model_loader(artifact.format)
        if loader is None:
            raise ModelError(f"{artifact.path} holds a {artifact.format} model, not a PyTorch one")
        return loader(artifact, trust_remote_code)
    from transformers import AutoModelForSequenceClassification

    cfg = check_source(artifact.path, trust_remote_code)
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

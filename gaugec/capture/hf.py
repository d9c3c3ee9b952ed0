"""Hugging Face targets: ``hf:DIR`` (a local model directory with its config.json) and ``hf:MODEL_TYPE`` (that
type's default config). Nothing is downloaded: the config is read from the directory or built by transformers, the
model is built from it on the meta device (no weights: discovery and proofs need only the graph), or on the CPU
with the directory's safetensors loaded (``weights=True``), and the example inputs are made from the config."""
from __future__ import annotations

import difflib
import json
import os

import torch

# the Auto classes tried, in order, when a config names no architecture
_AUTO = ("AutoModelForCausalLM", "AutoModelForMaskedLM", "AutoModelForImageClassification", "AutoModel")


class HFTargetError(ValueError):
    """A Hugging Face target that cannot be built: no config, an unknown type, weights that do not match."""


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise HFTargetError("hf: targets need transformers: pip install 'gaugec[hf]'") from exc
    return transformers


def load_config(spec: str):
    """The config of ``DIR`` (its config.json) or of the model type ``spec``."""
    tf = _transformers()
    if os.path.isdir(spec):
        path = os.path.join(spec, "config.json")
        if not os.path.exists(path):
            raise HFTargetError(f"{spec} has no config.json: not a Hugging Face model directory")
        try:
            return tf.AutoConfig.from_pretrained(spec, local_files_only=True)
        except (ValueError, KeyError, OSError, json.JSONDecodeError) as exc:
            raise HFTargetError(f"cannot read {path}: {exc}") from exc
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    if spec not in CONFIG_MAPPING:
        if os.sep in spec or spec.startswith("."):
            raise HFTargetError(f"no such directory: {spec}")
        close = difflib.get_close_matches(spec, list(CONFIG_MAPPING.keys()), n=3)
        raise HFTargetError(f"unknown Hugging Face model type {spec!r}" +
                            (f" (did you mean {', '.join(close)}?)" if close else ""))
    return tf.AutoConfig.for_model(spec)


def _model_class(config):
    """A function config -> model: the class the config names, else the first Auto class that knows the config."""
    tf = _transformers()
    for name in getattr(config, "architectures", None) or ():
        cls = getattr(tf, name, None)
        if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
            return cls
    for auto in _AUTO:
        cls = getattr(tf, auto, None)
        if cls is not None and type(config) in cls._model_mapping:
            return cls.from_config
    raise HFTargetError(f"no model class for {type(config).__name__}")


def example_inputs(model, config) -> tuple:
    """A batch of one made from the config: pixel values for an image model, 8 token ids below the vocabulary
    otherwise."""
    gen = torch.Generator().manual_seed(0)
    main = getattr(model, "main_input_name", "input_ids")
    if main == "pixel_values":
        size = getattr(config, "image_size", 224)
        size = size if isinstance(size, int) else size[0]
        return (torch.randn(1, getattr(config, "num_channels", 3), size, size, generator=gen),)
    vocab = getattr(config, "vocab_size", None) or getattr(getattr(config, "text_config", None), "vocab_size", None)
    if not vocab:
        raise HFTargetError(f"cannot make example inputs for {type(config).__name__}: no vocab_size or image_size")
    return (torch.randint(0, int(vocab), (1, 8), generator=gen),)


def _load_weights(model, directory: str):
    from safetensors.torch import load_file

    files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    if not files:
        raise HFTargetError(f"--weights: {directory} has no .safetensors file")
    state = {}
    for f in files:
        state.update(load_file(os.path.join(directory, f)))
    expected = dict(model.state_dict())
    missing = [k for k in expected if k not in state and not _tied_alias(model, k, state)]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise HFTargetError(f"the weights in {directory} do not match the model ({'; '.join(parts)})")
    model.load_state_dict(state, strict=False)


def _tied_alias(model, key: str, state: dict) -> bool:
    """A tied parameter saved once under another name (a tied LM head)."""
    named = dict(model.named_parameters(remove_duplicate=False))
    p = named.get(key)
    return p is not None and any(other in state and named[other] is p for other in named if other != key)


def load(spec: str, weights: bool = False):
    """(model, example_inputs) for ``hf:SPEC``; on the meta device unless ``weights`` (a directory's safetensors)."""
    config = load_config(spec)
    if weights and not os.path.isdir(spec):
        raise HFTargetError("--weights loads a directory's safetensors: give hf:DIR, not a model type")
    if hasattr(config, "use_cache"):          # a key/value cache is state the graph should not carry
        config.use_cache = False
    build = _model_class(config)
    if weights:
        model = build(config)
        _load_weights(model, spec)
    else:
        with torch.device("meta"):
            model = build(config)
    model.eval()
    return model, example_inputs(model, config)

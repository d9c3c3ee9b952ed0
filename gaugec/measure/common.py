"""What the readings share: flat parameters, the per-token loss and the likelihood it is read under."""
from __future__ import annotations

import torch

from gaugec.capture import unique_named_parameters


def params_of(model):
    info = unique_named_parameters(model)
    named = dict(model.named_parameters(remove_duplicate=False))
    return info, {k: named[k].detach() for k in info}


def flat_params(info, params) -> torch.Tensor:
    return torch.cat([params[k].reshape(-1) for k in info])


def submodule(model, name):
    mods = dict(model.named_modules())
    if name not in mods:
        raise KeyError(f"no submodule named {name!r}; known: {', '.join(k for k in mods if k)[:300]}")
    return mods[name]


def per_token_loss(out: torch.Tensor, y: torch.Tensor, likelihood: str) -> torch.Tensor:
    if likelihood == "categorical":
        return torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="sum")
    if likelihood == "gaussian":
        return 0.5 * ((out - y) ** 2).sum()
    raise ValueError(f"likelihood must be 'categorical' or 'gaussian', got {likelihood!r}")


def sample_labels(out: torch.Tensor, likelihood: str, gen: torch.Generator) -> torch.Tensor:
    """Labels drawn from the model's predictive distribution (the true Fisher)."""
    if likelihood == "categorical":
        probs = torch.softmax(out.detach().to(torch.float64), -1).reshape(-1, out.shape[-1])
        return torch.multinomial(probs, 1, generator=gen).reshape(out.shape[:-1])
    return out.detach() + torch.randn(out.shape, generator=gen, dtype=out.dtype)


def infer_likelihood(likelihood: str | None, targets) -> str:
    """The likelihood the Fisher is read under: as given, or from the targets (integer labels: categorical,
    floating-point targets: gaussian); a given one must fit the targets."""
    if likelihood not in (None, "categorical", "gaussian"):
        raise ValueError(f"likelihood must be 'categorical' or 'gaussian', got {likelihood!r}")
    if targets is None:
        if likelihood is None:
            raise ValueError("without targets the likelihood cannot be inferred: pass likelihood='categorical' "
                             "(a classifier or language model) or likelihood='gaussian' (a regression)")
        return likelihood
    floating = torch.as_tensor(targets).is_floating_point()
    inferred = "gaussian" if floating else "categorical"
    if likelihood is not None and likelihood != inferred:
        raise ValueError(f"likelihood={likelihood!r} does not fit {'floating-point' if floating else 'integer'} "
                         f"targets (they imply {inferred!r})")
    return inferred

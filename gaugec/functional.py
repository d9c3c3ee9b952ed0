"""What the model computes, as gaugec reads it: f (the output the loss sees), the measurement tools' output, and
float64 evaluation (a float64 twin of a model; in-model casts to lower precision redirected to float64)."""
from __future__ import annotations

import copy

import torch
from torch.utils import _pytree as pytree

from gaugec.capture.experts import dense_experts


def model_f(model, inputs, loss, leaves=None):
    """f, what the loss sees, at the model's current parameters (see :func:`f_value`); mixture-of-experts blocks
    run dense (the same function, with no kernel that refuses float64: :mod:`gaugec.capture.experts`)."""
    with dense_experts(model):
        return f_value(model(*inputs) if isinstance(inputs, tuple) else model(inputs), loss, leaves)


def f_value(out, loss, leaves=None):
    """f from a model output: the output leaves the loss sees (``leaves``: indices into the output's pytree leaves;
    default :func:`output_leaves`). One leaf: itself, as log-probabilities for cross entropy. Several: all of them,
    flattened and concatenated (a gauge must leave each unchanged; no shift invariance is assumed)."""
    flat = pytree.tree_leaves(out)
    idx = output_leaves(out) if leaves is None else leaves
    picked = [flat[i] for i in idx]
    if len(picked) == 1:
        t = picked[0]
        return torch.log_softmax(t.to(torch.float64), dim=-1) if loss == "cross_entropy" else t
    return torch.cat([t.reshape(-1).to(torch.float64) for t in picked])


def output_leaves(out, output=None) -> list[int]:
    """Which pytree leaves of a model output f is made of. ``output`` None: ``.logits`` (or a ``"logits"`` key) when
    there is one, else every floating-point tensor; a key or an index: that entry; a callable: the tensors it
    returns (it must select, e.g. ``lambda out: out[1]``, not compute)."""
    flat = pytree.tree_leaves(out)
    if output is None:
        logits = out.get("logits") if isinstance(out, dict) else getattr(out, "logits", None)
        picked = [logits] if isinstance(logits, torch.Tensor) else \
            [t for t in flat if isinstance(t, torch.Tensor) and t.is_floating_point()]
    else:
        try:
            sel = output(out) if callable(output) else out[output]
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"output={output!r} does not select an entry of the model's output "
                             f"({type(out).__name__}): {exc}") from exc
        picked = [t for t in pytree.tree_leaves(sel) if isinstance(t, torch.Tensor)]
    idx = [i for i, t in enumerate(flat) if any(t is q for q in picked)]
    if not idx or len(idx) != len(picked) or any(not flat[i].is_floating_point() for i in idx):
        raise ValueError(f"output={output!r}: f must be floating-point tensors of the model's output (a callable "
                         "must return entries of it, not compute new tensors)")
    return idx


def first_tensor(out):
    """The measurement tools' output: ``.logits``, else the first tensor."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):
        return out.logits
    if isinstance(out, dict):
        if "logits" in out:
            return out["logits"]
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
            t = first_tensor(o)
            if t is not None:
                return t
    return None


_LOW_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


class Float64Mode(torch.overrides.TorchFunctionMode):
    """Runs a forward pass in float64: a cast to a lower float precision inside forward (``one_hot(i).float()``,
    Hugging Face's ``.to(torch.float32)`` in its norms) goes to float64 instead, so a float64 model computes in
    float64 throughout. ``seen`` notes whether a low-precision tensor still appeared."""

    def __init__(self):
        super().__init__()
        self.seen = False

    def __torch_function__(self, func, _types, args=(), kwargs=None):
        if func in (torch.Tensor.float, torch.Tensor.half, torch.Tensor.bfloat16):
            func = torch.Tensor.double
        kwargs = kwargs or {}
        if kwargs.get("dtype") in _LOW_FLOATS:
            kwargs = {**kwargs, "dtype": torch.float64}
        args = tuple(torch.float64 if isinstance(a, torch.dtype) and a in _LOW_FLOATS else a for a in args)
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.dtype in _LOW_FLOATS:
            self.seen = True
        return out


def float64_twin(model: torch.nn.Module, inputs: tuple = (), copy_model: bool = True):
    """(model, inputs) in float64: a deep copy of the model (``copy_model=False`` converts it in place; the train /
    eval mode is kept), and every floating-point input cast; integer inputs (token ids) are kept."""
    if copy_model:
        # the memo hands deepcopy float64 copies of the floating parameters and buffers, so their float32 data is
        # never copied first (a 124M-parameter model: one 0.5 GB copy and its page faults fewer)
        memo = {}
        for t in [*model.parameters(), *model.buffers()]:
            if id(t) not in memo and t.is_floating_point() and not t.is_meta:
                c = t.detach().to(torch.float64, copy=True)
                memo[id(t)] = torch.nn.Parameter(c, requires_grad=t.requires_grad) \
                    if isinstance(t, torch.nn.Parameter) else c
        twin = copy.deepcopy(model, memo)
    else:
        twin = model
    twin = twin.to(torch.float64)
    return twin, tuple(x.to(torch.float64) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                       for x in inputs)

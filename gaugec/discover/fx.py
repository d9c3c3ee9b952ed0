"""torch.fx helpers the engine and the rules share: op names, shapes, arguments, axes."""
from __future__ import annotations

import numpy as np
import torch
import torch.fx


def op_name(node: torch.fx.Node) -> str:
    """'view', 'linear', 'add', ... for ATen call_function nodes; '<builtin getitem>' style names otherwise."""
    if node.op != "call_function":
        return node.op
    t = node.target
    schema = getattr(t, "_schema", None)
    if schema is not None:
        return schema.name.split("::")[-1]
    return getattr(t, "__name__", str(t))


def node_shape(node) -> tuple[int, ...] | None:
    """The tensor's static shape; None for a non-tensor or a data-dependent size (an unbacked symbol after
    ``nonzero()``: the rules then treat the tensor as unknown, a barrier)."""
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if isinstance(val, torch.Tensor) and all(isinstance(s, int) for s in val.shape):
        return tuple(val.shape)
    return None


def data_dependent(node) -> bool:
    """A tensor whose shape holds a data-dependent (unbacked) size."""
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return isinstance(val, torch.Tensor) and not all(isinstance(s, int) for s in val.shape)


def arg(node: torch.fx.Node, i: int, name: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def varying_axes(a: np.ndarray) -> set[int]:
    """Axes along which the array is not constant."""
    out = set()
    for ax in range(a.ndim):
        if a.shape[ax] > 1:
            first = np.take(a, [0], axis=ax)
            if not np.all(a == first):
                out.add(ax)
    return out


CAST_OPS = ("_to_copy", "to", "clone", "contiguous", "alias", "type_as")


def strip_casts(n):
    """The node under any chain of casts and copies (``x.to(float32)``, ``.contiguous()``)."""
    while isinstance(n, torch.fx.Node) and n.op == "call_function" and op_name(n) in CAST_OPS:
        n = n.args[0]
    return n

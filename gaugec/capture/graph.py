"""The captured graph (:class:`GaugeGraph`: the ATen graph, which placeholder binds which parameter, which outputs
f is made of) and the parameter bookkeeping every stage shares (tied tensors once, flat offsets)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.fx
from torch.utils import _pytree as pytree

from gaugec.functional import output_leaves


class CaptureError(RuntimeError):
    """The model could not be traced; the message names the construct and what to try."""


@dataclasses.dataclass
class ParamInfo:
    name: str                 # first name in model.named_parameters() (tied tensors once)
    shape: tuple[int, ...]
    aliases: list[str]        # other names of the same tensor (tied parameters)


@dataclasses.dataclass
class GaugeGraph:
    """An fx graph at ATen level plus the binding of its placeholders to model parameters."""

    graph_module: torch.fx.GraphModule
    placeholder_param: dict[str, str]      # placeholder node name -> parameter name
    params: dict[str, ParamInfo]           # parameter name -> info, in named_parameters() order
    user_inputs: list[str]                 # placeholder names of the user inputs
    exported: Any = None                   # the ExportedProgram, when there is one
    tracer: str = "export"

    @property
    def graph(self) -> torch.fx.Graph:
        return self.graph_module.graph

    def user_output_nodes(self) -> list:
        """The graph's user outputs in the order of the model output's pytree leaves (buffer mutations dropped)."""
        out_node = next(n for n in reversed(self.graph.nodes) if n.op == "output")
        leaves = list(out_node.args[0]) if isinstance(out_node.args[0], (tuple, list)) else [out_node.args[0]]
        if self.exported is None:
            return leaves
        specs = self.exported.graph_signature.output_specs
        return [leaf for spec, leaf in zip(specs, leaves) if spec.kind.name == "USER_OUTPUT"]

    def f_leaves(self, output=None) -> list[int]:
        """Indices of the output leaves f is made of (:func:`gaugec.functional.output_leaves` on the traced output)."""
        nodes = self.user_output_nodes()
        vals = [n.meta.get("val") if isinstance(n, torch.fx.Node) else n for n in nodes]
        vals = [v if v is not None else object() for v in vals]
        tree = pytree.tree_unflatten(vals, self.exported.call_spec.out_spec) if self.exported is not None else vals
        return output_leaves(tree, output)

    def signature(self) -> str:
        """A hash of the graph: every node's op, its inputs and its output shape, and which parameter each
        placeholder is. Two models with the same parameter shapes but another op (ReLU against GELU) differ."""
        import hashlib

        h = hashlib.sha256()
        for n in self.graph.nodes:
            val = n.meta.get("val")
            shape = tuple(val.shape) if isinstance(val, torch.Tensor) else None
            target = getattr(n.target, "__name__", str(n.target)) if n.op == "call_function" else n.op
            h.update(repr((n.name, target, [str(a) for a in n.all_input_nodes], shape,
                           self.placeholder_param.get(n.name))).encode())
        return h.hexdigest()[:24]

    def param_of(self, node: torch.fx.Node) -> str | None:
        if node.op == "placeholder":
            return self.placeholder_param.get(node.name)
        return None


def unique_named_parameters(model: torch.nn.Module) -> dict[str, ParamInfo]:
    """named_parameters() with tied tensors once (first name wins, later names become aliases)."""
    seen: dict[int, ParamInfo] = {}
    out: dict[str, ParamInfo] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        key = id(p)
        if key in seen:
            seen[key].aliases.append(name)
            continue
        info = ParamInfo(name, tuple(p.shape), [])
        seen[key] = info
        out[name] = info
    return out


def param_offsets(info: dict[str, ParamInfo]) -> tuple[dict[str, int], int]:
    """Where each parameter starts in the flat vector θ (named_parameters() order, tied once), and len(θ)."""
    offsets, o = {}, 0
    for name, i in info.items():
        offsets[name] = o
        o += int(math.prod(i.shape))
    return offsets, o


def unflatten_params(info: dict[str, ParamInfo], vec: torch.Tensor) -> dict[str, torch.Tensor]:
    """θ as a {name: tensor} dict for functional_call, every alias of a tied parameter pointing at its slice."""
    out, o = {}, 0
    for name, i in info.items():
        n = int(math.prod(i.shape))
        t = vec[o:o + n].reshape(i.shape)
        out[name] = t
        for a in i.aliases:
            out[a] = t
        o += n
    return out

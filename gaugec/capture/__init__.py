"""Capture: turn an ``nn.Module`` (or an fx ``GraphModule`` / ``ExportedProgram``) into a :class:`GaugeGraph`.

The graph is the ATen-level training IR of ``torch.export`` (non-strict): parameters are lifted to placeholders
and mapped back to their ``named_parameters()`` names through the export signature. ``tracer="fx"`` first runs
``torch.fx.symbolic_trace`` (with ``concrete_args`` for flags such as ``use_cache``) and exports the resulting
straight-line ``GraphModule``, so both tracers feed the discovery rules one IR.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.fx


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
        """Indices of the output leaves f is made of (:func:`gaugec.pipeline.output_leaves` on the traced output)."""
        from torch.utils import _pytree as pytree

        from gaugec.pipeline import output_leaves

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


def _as_tuple(example_inputs) -> tuple:
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def _hint(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    hints = []
    low = text.lower()
    if "data-dependent" in low or "guardondatadependent" in low or "could not guard" in low:
        hints.append("the forward branches on tensor values; pass example inputs that fix the branch, or "
                     "use tracer='fx' with concrete_args")
    if "cache" in low or "dynamiccache" in low:
        hints.append("Hugging Face models: build with use_cache=False (config.use_cache = False)")
    if "proxy" in low:
        hints.append("symbolic tracing cannot iterate over or branch on a traced value; try tracer='export'")
    if not hints:
        hints.append("try the other tracer (tracer='fx' or 'export'), check that the example inputs run the "
                     "model eagerly, and for Hugging Face models set use_cache=False")
    first_line = text.strip().splitlines()[0][:400] if text.strip() else type(exc).__name__
    return f"{first_line}\n  what to try: " + "; ".join(hints)


def capture(model, example_inputs=(), tracer: str = "export", concrete_args: dict | None = None) -> GaugeGraph:
    """Trace ``model`` into a :class:`GaugeGraph` (see module docstring).

    ``tracer="export"`` tries torch.export first and falls back to torch.fx.symbolic_trace (then exports the traced
    GraphModule); ``tracer="fx"`` goes through symbolic_trace directly. When every route fails, the error gives
    each route's reason and what to try."""
    if isinstance(model, torch.export.ExportedProgram):
        return _from_exported(model, None, "export")
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"expected an nn.Module, GraphModule or ExportedProgram, got {type(model).__name__}")
    if tracer not in ("export", "fx"):
        raise CaptureError(f"unknown tracer {tracer!r}; use 'export' or 'fx'")
    args = _as_tuple(example_inputs)
    params = unique_named_parameters(model)
    failures = []
    if tracer == "export":
        try:
            return _from_exported(_export(model, model, args), params, "export")
        except Exception as exc:  # noqa: BLE001 - the fx route is tried next, then both reasons are reported
            failures.append(f"torch.export (non-strict) failed on {type(model).__name__}: {_hint(exc)}")
    try:
        traced = torch.fx.symbolic_trace(model, concrete_args=concrete_args)
    except Exception as exc:  # noqa: BLE001 - reported with a hint
        failures.append(f"torch.fx.symbolic_trace failed: {_hint(exc)}")
        raise CaptureError("\n".join(failures)) from exc
    try:
        return _from_exported(_export(model, traced, args), params, "fx")
    except Exception as exc:  # noqa: BLE001 - reported with a hint
        failures.append(f"torch.export of the fx-traced graph failed: {_hint(exc)}")
        raise CaptureError("\n".join(failures)) from exc


def _export(model, target, args):
    """torch.export (non-strict) of ``target`` with the model in eval mode (dropout off, BatchNorm statistics)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.export.export(target, args, strict=False)
    finally:
        model.train(was_training)


def _from_exported(ep, params: dict[str, ParamInfo] | None, tracer: str) -> GaugeGraph:
    sig = ep.graph_signature
    inputs_to_params = dict(sig.inputs_to_parameters)
    if params is None:
        params = {name: ParamInfo(name, tuple(t.shape), []) for name, t in ep.named_parameters()}
    alias_to_name = {}
    for info in params.values():
        alias_to_name[info.name] = info.name
        for a in info.aliases:
            alias_to_name[a] = info.name
    placeholder_param = {}
    for ph, pname in inputs_to_params.items():
        if pname not in alias_to_name:
            raise CaptureError(f"exported parameter {pname!r} is not among the model's parameters")
        placeholder_param[ph] = alias_to_name[pname]
    user_inputs = list(sig.user_inputs)
    gm = ep.graph_module
    return GaugeGraph(gm, placeholder_param, params, user_inputs, ep, tracer)

"""Tracing: torch.export (non-strict), with torch.fx.symbolic_trace as the fallback route, into a GaugeGraph."""
from __future__ import annotations

import torch
import torch.fx

from gaugec.capture.experts import dense_experts
from gaugec.capture.graph import CaptureError, GaugeGraph, ParamInfo, unique_named_parameters


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
    """torch.export (non-strict) of ``target`` with the model in eval mode (dropout off, BatchNorm statistics) and
    its mixture-of-experts blocks dense (:mod:`gaugec.capture.experts`)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), dense_experts(model):
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
    # dtype assertions the exporter inserts after casts: no value, but they would count as extra readers of the
    # tensors they check (a residual writer must feed only its sum)
    for n in list(gm.graph.nodes):
        if n.op == "call_function" and "_assert_tensor_metadata" in str(n.target) and not n.users:
            gm.graph.erase_node(n)
    return GaugeGraph(gm, placeholder_param, params, user_inputs, ep, tracer)

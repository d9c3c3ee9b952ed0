"""Capture: turn an ``nn.Module`` (or an fx ``GraphModule`` / ``ExportedProgram``) into a :class:`GaugeGraph`.

The graph is the ATen-level training IR of ``torch.export`` (non-strict): parameters are lifted to placeholders
and mapped back to their ``named_parameters()`` names through the export signature. ``tracer="fx"`` first runs
``torch.fx.symbolic_trace`` (with ``concrete_args`` for flags such as ``use_cache``) and exports the resulting
straight-line ``GraphModule``, so both tracers feed the discovery rules one IR.
"""
from gaugec.capture.graph import (CaptureError, GaugeGraph, ParamInfo, param_offsets, unflatten_params,  # noqa: F401
                                  unique_named_parameters)
from gaugec.capture.experts import dense_experts  # noqa: F401
from gaugec.capture.trace import capture  # noqa: F401

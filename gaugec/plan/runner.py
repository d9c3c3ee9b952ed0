"""Run the captured graph on given parameters and read intermediate tensors (for absorbing biases)."""
from __future__ import annotations

import torch
import torch.fx
from torch.utils import _pytree as pytree


_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


class GraphRunner:
    def __init__(self, gg, model: torch.nn.Module, example_inputs: tuple):
        if gg is None or gg.exported is None:
            raise ValueError("this plan needs its captured graph: compile it, or pass example_inputs to "
                             "GaugePlan.from_json")
        self.gg = gg
        self.ep = gg.exported
        self.model = model
        self.example_inputs = example_inputs

    def values(self, params: dict[str, torch.Tensor], names: set[str]) -> dict[str, torch.Tensor]:
        """Values of the nodes ``names`` (float64) with the model's parameters replaced by ``params``; differentiable
        in ``params`` when they require grad (the tangent operator's adjoint), no graph is kept otherwise."""
        ep = self.ep
        buffers = dict(self.model.named_buffers())
        flat_inputs = pytree.tree_leaves(self.example_inputs)
        args = []
        ui = 0
        for spec in ep.graph_signature.input_specs:
            kind = spec.kind.name
            if kind == "PARAMETER":
                pname = self.gg.placeholder_param[spec.arg.name]
                args.append(params[pname])
            elif kind == "BUFFER":
                args.append(buffers[spec.target])
            elif kind in ("CONSTANT_TENSOR", "CUSTOM_OBJ"):
                args.append(ep.constants[spec.target])
            elif kind == "USER_INPUT":
                val = flat_inputs[ui] if ui < len(flat_inputs) else None
                ui += 1
                args.append(val)
            else:
                raise ValueError(f"unsupported graph input kind {kind}")
        captured: dict[str, torch.Tensor] = {}

        class _Interp(torch.fx.Interpreter):
            """Runs the float32-traced graph in float64: metadata asserts are skipped, float casts go to float64."""

            def call_function(self, target, args, kwargs):
                name = getattr(getattr(target, "_schema", None), "name", "")
                if name == "aten::_assert_tensor_metadata":
                    return None
                if kwargs.get("dtype") in _FLOATS:
                    kwargs = {**kwargs, "dtype": torch.float64}
                args = tuple(torch.float64 if a in _FLOATS else a for a in args)
                return super().call_function(target, args, kwargs)

            def run_node(self, n):
                out = super().run_node(n)
                if n.name in names:
                    captured[n.name] = out
                return out

        args = [a.to(torch.float64) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        _Interp(self.gg.graph_module).run(*args)
        return captured

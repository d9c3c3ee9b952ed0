"""The numeric half of every proof: a large random element of each gauge, applied to a float64 twin of the model,
must leave f unchanged (relative residual ≤ 1e-10; 1e-5 where the model itself computes in float32 inside forward,
e.g. Hugging Face norms). A gauge whose legs read a gain (a rotation seen through a norm gain) is checked a second
time with those gains moved off 1, where a conjugation by the wrong gain would show.

The gauges are checked in groups that share no parameter (one forward pass per group, halved where f moved), so a
model with hundreds of gauges costs a few forward passes: each gauge's residual is its group's."""
from __future__ import annotations

import warnings

import torch

from gaugec.functional import Float64Mode, float64_twin, model_f
from gaugec.progress import Progress

DEFAULT_TOL = 1e-10
FLOAT32_TOL = 1e-5


@torch.no_grad()
def numeric_check(plan, seed: int = 0, spread: float = 10.0):
    """Apply a large random element of each gauge of ``plan`` (a :class:`gaugec.plan.plan.GaugePlan`) to a float64
    copy of the model: f must not change. Records the residual, the tolerance and any note in each gauge's proof."""
    model64, inputs = float64_twin(plan.model, plan.example_inputs)
    model64.eval()
    bound = plan.bind(model64)

    def f():
        with Float64Mode() as mode:
            out = model_f(model64, inputs, plan.loss, plan.f_leaves).to(torch.float64)
        return out, mode.seen

    f0, low = f()
    finite = torch.isfinite(f0)
    if not bool(finite.any()):
        warnings.warn("gaugec: f(θ) is not finite at the example inputs (NaN/inf everywhere): the numeric check "
                      "was skipped; fix the inputs or the model (e.g. a norm with eps = 0 on a zero vector)")
        for g in plan.gauges:
            g.proof.numeric_note = "f(θ) not finite at the example inputs: numeric check skipped"
        return
    tol = FLOAT32_TOL if low else DEFAULT_TOL
    note = "the model computes in float32 or lower inside forward (e.g. its norms): ~1e-7 is the floor" if low else ""
    scale = f0[finite].abs().max().clamp_min(1e-300)
    named = dict(model64.named_parameters(remove_duplicate=False))
    # the twin's values are the model's, so a moved parameter is put back from the model itself (no snapshot copy)
    original = dict(plan.model.named_parameters(remove_duplicate=False))
    gen = torch.Generator().manual_seed(seed)
    elements = [g.random_element(gen, spread) for g in plan.gauges]
    found: dict[int, tuple[float, str]] = {}
    position = {n.name: k for k, n in enumerate(plan.graph.graph.nodes)} if plan.graph is not None else {}
    last_site = [max((position.get(lg.site, -1) for lg in g.legs if lg.role == "absorb"), default=-1)
                 for g in plan.gauges]

    def residual(idx: list[int], moved_gains: bool) -> tuple[float, str]:
        """f's relative change under the elements of the gauges ``idx`` applied one after the other; with
        ``moved_gains``, at gains moved off 1 (a conjugation by the wrong gain is invisible where the gains are all
        1, their usual initialisation)."""
        gauges = [plan.gauges[i] for i in idx]
        gains = sorted({lg.conj for g in gauges for lg in g.legs if lg.conj}) if moved_gains else []
        moved = list(dict.fromkeys([p for g in gauges for p in g.params] + gains))
        try:
            ref, ref_finite, ref_scale = f0, finite, scale
            if gains:
                off_one = torch.Generator().manual_seed(seed + 1 + idx[0])
                for name in gains:
                    named[name].mul_(1 + 0.5 * (2 * torch.rand(named[name].shape, generator=off_one,
                                                               dtype=torch.float64) - 1))
                ref, _ = f()
                ref_finite, ref_scale = torch.isfinite(ref), ref.abs().max()
            order = sorted(idx, key=lambda i: -last_site[i])    # latest absorbing site first: see AbsorbReads
            return _residual(bound, [plan.gauges[i] for i in order], [elements[i] for i in order], f, ref,
                             ref_finite, ref_scale)
        finally:
            _restore(named, original, moved)   # only what these gauges moved is copied back

    def check(idx: list[int], moved_gains: bool):
        """Group testing: one forward for the whole group; a group above tolerance is halved until the gauges that
        change f stand alone. A false gauge passes only if another's random element cancels its change of f."""
        res, undefined = residual(idx, moved_gains)
        if (res > tol or undefined) and len(idx) > 1:
            check(idx[:len(idx) // 2], moved_gains)
            check(idx[len(idx) // 2:], moved_gains)
            return
        for i in idx:
            before = found.get(i, (0.0, ""))
            found[i] = (max(before[0], res), before[1] or undefined)

    with Progress("numeric check", total=len(plan.gauges)) as bar:
        for group in disjoint_groups(plan.gauges, range(len(plan.gauges))):
            check(group, False)
            bar.update(len(group))
        conjugated = [i for i, g in enumerate(plan.gauges) if any(lg.conj for lg in g.legs) and not found[i][1]]
        bar.stage("conjugated gains moved off 1")
        for group in disjoint_groups(plan.gauges, conjugated):
            check(group, True)
    for i, g in enumerate(plan.gauges):
        res, undefined = found[i]
        g.numeric_residual = res
        g.proof.numeric_residual = res
        g.proof.numeric_tol = tol
        g.proof.numeric_note = undefined or note


# families whose large elements compound rounding when composed although they share no parameter: a translation of
# a LayerNorm's input (norm_input_shift; the centred output then carries rounding ∝ the shift) and a move of the
# norm's reader along its kernel (layernorm_kernel; W + t γ⁻ᵀ turns that rounding into t times more); together
# ~5e-10 on GPT-2 small, each alone ~1e-13. Kept in separate groups so the halving does not have to find them.
COMPOUNDING = {frozenset({"norm_input_shift", "layernorm_kernel"})}


def disjoint_groups(gauges, idx) -> list[list[int]]:
    """The gauges ``idx`` coloured greedily so that no two in a group move or read the same parameter, or belong
    to a :data:`COMPOUNDING` pair of families: composing their elements then moves each parameter once, and f's
    rounding stays that of one element (two large translations of one stream compose to a larger one, whose
    cancellation in a norm at eps 0 costs digits)."""
    groups: list[tuple[list[int], set[str], set[str]]] = []
    for i in idx:
        g = gauges[i]
        touched = {lg.param for lg in g.legs} | {lg.conj for lg in g.legs if lg.conj}
        clash = {f for pair in COMPOUNDING if g.family in pair for f in pair if f != g.family}
        for members, used, families in groups:
            if not used & touched and not clash & families:
                members.append(i)
                used |= touched
                families.add(g.family)
                break
        else:
            groups.append(([i], touched, {g.family}))
    return [members for members, _, _ in groups]


def _restore(named: dict[str, torch.Tensor], original: dict[str, torch.Tensor], names: list[str]):
    with torch.no_grad():
        for name in names:
            named[name].copy_(original[name].detach())


def _residual(bound, gauges, elements, f, f0, finite, scale) -> tuple[float, str]:
    """max |f(g·θ) − f(θ)| / max |f(θ)| (inf when the action is undefined or changes which entries are finite)."""
    try:
        bound.act(elements, gauges=gauges)
    except ValueError as exc:   # the action is undefined here (a rotation conjugated by a zero gain)
        return float("inf"), str(exc)
    f1, _ = f()
    if not torch.equal(torch.isfinite(f1), finite):
        return float("inf"), ""
    return float(((f1 - f0)[finite].abs().max() / scale.clamp_min(1e-300)).item()), ""

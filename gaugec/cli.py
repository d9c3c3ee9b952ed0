"""Command line: ``gaugec inspect | check | verify | measure | demo | zoo``.

TARGET is ``zoo:NAME`` (or a bare zoo name), ``path/to/file.py:factory`` or ``package.module:factory`` (a factory
returns ``(model, example_inputs)``), or a Hugging Face model: ``hf:DIR`` (a local directory with its config.json;
built on the meta device, or with its safetensors loaded under ``--weights``) or ``hf:MODEL_TYPE`` (that type's
default config, on the meta device).

Exit codes of ``check``: 0 the gauges hold and match the lock, 1 a proof, numeric check or lock comparison failed,
2 usage or capture error (including a corrupted lock file).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import tempfile
import textwrap
import traceback

import torch

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
LOCK_FORMAT = "gaugec-lock/1"


class UsageError(Exception):
    pass


# ---------------------------------------------------------------------------------------------------------------
# targets


def load_target(target: str, weights: bool = False):
    from gaugec import zoo

    if weights and not target.startswith("hf:"):
        raise UsageError("--weights is for hf:DIR targets (a zoo model or a factory brings its own weights)")
    if target.startswith("hf:"):
        from gaugec.capture import hf

        try:
            made = hf.load(target[3:], weights=weights)
        except hf.HFTargetError as exc:
            raise UsageError(str(exc)) from exc
    elif target.startswith("zoo:") or target in zoo.ZOO:
        name = target[4:] if target.startswith("zoo:") else target
        try:
            made = zoo.load(name)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from exc
    else:
        if ":" not in target:
            raise UsageError(f"TARGET {target!r}: expected zoo:NAME, path/to/file.py:factory or module:factory")
        where, factory = target.rsplit(":", 1)
        if where.endswith(".py"):
            if not os.path.exists(where):
                raise UsageError(f"no such file: {where}")
            spec = importlib.util.spec_from_file_location("_gaugec_target", where)
            mod = importlib.util.module_from_spec(spec)
            sys.modules["_gaugec_target"] = mod
            spec.loader.exec_module(mod)
        else:
            try:
                mod = importlib.import_module(where)
            except ImportError as exc:
                raise UsageError(f"cannot import {where!r}: {exc}") from exc
        fn = getattr(mod, factory, None)
        if fn is None:
            raise UsageError(f"{where} has no factory {factory!r}")
        made = fn()
    if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module)):
        raise UsageError(f"the factory for {target} must return (model, example_inputs)")
    model, inputs = made
    if not isinstance(inputs, tuple):
        inputs = (inputs,)
    return model, inputs


def _loss(s: str):
    return None if s in ("none", "None", "raw") else s


def compile_target(args):
    import gaugec

    model, inputs = load_target(args.target, getattr(args, "weights", False))
    plan = gaugec.compile(model, inputs, loss=_loss(args.loss), tracer=args.tracer)
    return model, inputs, plan


def _needs_weights(plan, what: str):
    if plan.model_is_meta():
        raise UsageError(f"{what} needs weights, and this model is on the meta device: give hf:DIR --weights (a "
                         f"directory with its safetensors), a zoo model or a factory")


# ---------------------------------------------------------------------------------------------------------------
# printing


def _fmt_res(r):
    return "-" if r is None else f"{r:.1e}"


def format_table(plan) -> str:
    rows = [("gauge", "family", "group", "dim", "parameters", "proof", "residual")]
    for g in plan.gauges:
        params = ", ".join(g.params)
        rows.append((g.name, g.family, g.group, str(g.dim), params if len(params) < 60 else params[:57] + "...",
                     g.proof.status if g.proof else "-", _fmt_res(g.numeric_residual)))
    for g in plan.rejected:
        rows.append((g.name, g.family, g.group, str(g.dim), ", ".join(g.params)[:60],
                     g.proof.status if g.proof else "-", _fmt_res(g.numeric_residual)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i != 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    total = sum(g.dim for g in plan.gauges)
    lines.append("")
    rank = ("not ranked (the meta device has no weights; at generic weights it is at most the generators)"
            if plan.model_is_meta() else f"orbit dimension (rank) {plan.dim}")
    lines.append(f"{len(plan.gauges)} gauges, {total} generators; {rank}"
                 + (f"; {len(plan.rejected)} REJECTED" if plan.rejected else ""))
    notes = {g.proof.numeric_note for g in plan.gauges if g.proof and g.proof.numeric_note}
    for n in notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)


def format_explain(plan) -> str:
    lines = ["barriers and refusals (why a candidate group did not survive):"]
    by_reason: dict[str, list] = {}
    for r in plan.refusals:
        by_reason.setdefault(r.reason, []).append(r)
    for reason, rs in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"- {reason}  [{len(rs)}]")
        for r in rs[:4]:
            lines.append(f"    {r.probe}  (stopped at {r.where})")
        if len(rs) > 4:
            lines.append(f"    ... and {len(rs) - 4} more")
    if plan.unknown_ops:
        lines.append("ops with no rule (barriers; count = probes stopped there): "
                     + ", ".join(f"{k} ({v})" for k, v in plan.unknown_ops.items()))
    lines.append("")
    lines.append("lemmas cited per gauge (sympy verdict):")
    for g in plan.gauges:
        lines.append(f"- {g.name}: " + ", ".join(
            f"{lid}{'' if g.proof.lemma_status.get(lid) else ' (FAILED)'}" for lid in g.proof.lemmas))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# lock files


def lock_data(plan) -> dict:
    return {"format": LOCK_FORMAT, "loss": plan.loss,
            "gauges": {g.name: {"family": g.family, "group": g.group, "dim": g.dim, "params": g.params,
                                "lemmas": g.proof.lemmas if g.proof else []} for g in plan.gauges}}


def read_lock(path: str) -> dict:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except OSError as exc:
        raise UsageError(f"cannot read lock file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise UsageError(f"lock file {path} is corrupted (not JSON: {exc}); regenerate it with --update") from exc
    if not isinstance(data, dict) or data.get("format") != LOCK_FORMAT or not isinstance(data.get("gauges"), dict):
        raise UsageError(f"lock file {path} is corrupted (expected format {LOCK_FORMAT!r} with a 'gauges' table); "
                         "regenerate it with --update")
    for name, g in data["gauges"].items():
        if not isinstance(g, dict) or not {"family", "group", "dim", "params"} <= set(g):
            raise UsageError(f"lock file {path} is corrupted: entry {name!r} lacks family/group/dim/params")
    return data


def write_lock(path: str, data: dict):
    """Atomically: a temporary file beside the lock, then a rename, so a failed write keeps the old lock."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".gaugec-lock-", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise UsageError(f"cannot write lock file {path}: {exc.strerror or exc} (the old lock, if any, is kept)") \
            from exc


def diff_lock(old: dict, new: dict) -> list[str]:
    out = []
    if old.get("loss") != new.get("loss"):
        out.append(f"~ loss: {old.get('loss')} -> {new.get('loss')}")
    og, ng = old["gauges"], new["gauges"]
    for name in sorted(set(og) - set(ng)):
        out.append(f"- {name}: {og[name]['group']} (dim {og[name]['dim']}) no longer found")
    for name in sorted(set(ng) - set(og)):
        out.append(f"+ {name}: {ng[name]['group']} (dim {ng[name]['dim']}) new")
    for name in sorted(set(og) & set(ng)):
        for key in ("family", "group", "dim", "params", "lemmas"):
            if key in og[name] and og[name][key] != ng[name][key]:
                out.append(f"~ {name}.{key}: {og[name][key]} -> {ng[name][key]}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# commands


def _write_picture(args, plan, report=None):
    from gaugec import picture

    for path, write in ((getattr(args, "html", None), picture.write_html),
                        (getattr(args, "png", None), picture.write_png)):
        if path:
            try:
                write(path, plan, report, title=args.target)
            except ImportError as exc:
                raise UsageError(str(exc)) from exc
            print(f"\nwrote {path}")


def cmd_inspect(args) -> int:
    _, _, plan = compile_target(args)
    if args.json:
        print(plan.to_json(indent=2))
        return EXIT_OK
    print(format_table(plan))
    _write_picture(args, plan)
    if args.explain:
        print()
        print(format_explain(plan))
    return EXIT_OK


def cmd_check(args) -> int:
    _, _, plan = compile_target(args)
    failures = []
    for g in plan.gauges + plan.rejected:
        ok = g.proof.check(use_cache=not args.fresh_proofs)
        if not ok:
            failures.append(f"proof of {g.name} failed: {g.proof.status}")
        elif g.proof.numeric_ok is False:
            failures.append(f"numeric check of {g.name} failed: residual {g.numeric_residual:.2e}")
    print(format_table(plan))
    meta = plan.model_is_meta()
    new = lock_data(plan)
    if args.lock:
        if args.update:
            write_lock(args.lock, new)
            print(f"\nwrote lock file {args.lock}")
        else:
            old = read_lock(args.lock)
            diff = diff_lock(old, new)
            if diff:
                failures.append(f"the gauges differ from lock file {args.lock}:")
                failures.extend("  " + d for d in diff)
    if failures:
        print("\nCHECK FAILED")
        for f in failures:
            print(f)
        return EXIT_FAIL
    lock = ", lock matches" if args.lock and not args.update else ""
    if meta:
        print(f"\ncheck holds: every proof re-ran{lock}; NO numeric check ran (the model is on the meta device, "
              f"without weights: --weights checks a directory's)")
    else:
        print(f"\ncheck holds: every proof re-ran, every numeric check passed{lock}")
    return EXIT_OK


def cmd_verify(args) -> int:
    import gaugec

    model, inputs, plan = compile_target(args)
    _needs_weights(plan, "verify")
    if not any(True for _ in model.parameters()):
        raise UsageError(f"{args.target} has no parameters: there is nothing for the oracle to check")
    rep = gaugec.verify(model, inputs, plan)
    print(rep)
    _write_picture(args, plan, rep)
    return EXIT_OK if rep.sound else EXIT_FAIL


def cmd_demo(args) -> int:
    import gaugec
    from gaugec import zoo

    model, inputs = zoo.load(args.model)
    print(f"gaugec demo: zoo:{args.model}  ({sum(p.numel() for p in model.parameters())} parameters)\n")
    print((zoo.ZOO[args.model].__doc__ or "").strip() + "\n")
    plan = gaugec.compile(model, inputs, loss="cross_entropy")
    print(format_table(plan))
    print("\nJacobian oracle (float64, generic point):")
    rep = gaugec.verify(model, inputs, plan)
    print(textwrap.indent(str(rep), "  "))
    return EXIT_OK if rep.sound and not plan.rejected else EXIT_FAIL


def cmd_measure(args) -> int:
    """Classify the plan's gauges and the dead directions of chosen layers at a checkpoint."""
    import numpy as np

    import gaugec
    from gaugec import measure

    model, inputs = load_target(args.target, args.weights)
    if any(p.is_meta for p in model.parameters()):
        raise UsageError("measure needs weights, and this model is on the meta device: give hf:DIR --weights, a "
                         "zoo model or a factory")
    if args.along:
        return _measure_along(args, model, inputs)
    if args.checkpoint:
        try:
            state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - reported as a usage error
            raise UsageError(f"cannot read checkpoint {args.checkpoint}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(state, dict):
            raise UsageError(f"checkpoint {args.checkpoint} is not a state dict")
        _check_finite(state, args.checkpoint)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise UsageError(f"checkpoint {args.checkpoint} does not match the model: {str(exc)[:400]}") from exc
    model, inputs, wide, likelihood, layers = _measure_setup(args, model, inputs)
    plan = gaugec.compile(model, inputs, loss=_loss(args.loss))
    op = plan.tangent_operator()            # one generator per gauge, without the whole basis
    rows = []
    for sl in op.slices:
        unit = torch.zeros(op.shape[0], dtype=torch.float64)
        unit[sl.start] = 1.0
        rows.append(op.matvec(unit))
    ts = np.logspace(-3, -1, 5)
    readings = measure.classify(model, inputs, rows, plan=plan, likelihood=likelihood, ts=ts)
    print(f"{'gauge':<48} {'family':<18} {'reading':<9} {'max uᵀFu':>10}")
    for g, r in zip(plan.gauges, readings):
        print(f"{g.name:<48} {g.family:<18} {r['kind']:<9} {np.abs(r['reading'].fisher).max():>10.1e}")
    spectra = {}
    curves = []
    print(f"\n{'layer':<28} {'eigenvalue':>11} {'reading':<9} {'order k':>8} {'1/(2k)':>7} {'in plan':>8}")
    for layer in layers:
        names, evals, evecs, offsets, n = measure.layer_parameter_fisher(model, wide, layer, likelihood)
        spectra[layer] = evals.clamp_min(1e-300).numpy()
        sizes = [plan._param_info[k] for k in names]
        start = offsets[names[0]]
        width = sum(int(np.prod(i.shape)) for i in sizes)
        for j in range(min(args.top, evecs.shape[1])):
            u = torch.zeros(n, dtype=torch.float64)
            u[start:start + width] = evecs[:, j]
            (r,) = measure.classify(model, inputs, [u], plan=plan, likelihood=likelihood, ts=ts)
            rd = r["reading"]
            curves.append((f"{layer} #{j}", rd))
            print(f"{layer:<28} {float(evals[j]):>11.2e} {rd.kind:<9} {rd.order:>8.2f} {rd.coefficient:>7.3f} "
                  f"{'yes' if r['in_plan'] else 'no':>8}")
    _measure_plots(args.out, spectra, curves)
    return EXIT_OK


def _check_finite(state: dict, where: str):
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise UsageError(f"checkpoint {where}: {k} holds NaN or inf")


def _measure_setup(args, model, inputs):
    """float64 model and inputs, a wide batch for the Fisher, the likelihood, and the layers to read."""
    from gaugec.functional import float64_twin
    from gaugec.oracle import sample_inputs

    model, inputs = float64_twin(model.eval(), inputs, copy_model=False)
    # the example batch is tiny: read the Fisher on many more inputs drawn like it (tokens over the vocabulary)
    wide = sample_inputs(model, inputs, torch.Generator().manual_seed(0), batch_mult=args.samples)
    likelihood = "categorical" if _loss(args.loss) == "cross_entropy" else "gaussian"
    layers = args.layer or [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][:2]
    known = dict(model.named_modules())
    for layer in layers:
        if layer not in known or not layer:
            raise UsageError(f"--layer {layer!r} is not a submodule of the model; its Linear layers: "
                             + ", ".join(n for n, m in known.items() if isinstance(m, torch.nn.Linear))[:300])
    return model, inputs, wide, likelihood, layers


def _measure_along(args, model, inputs) -> int:
    """Readings of chosen layers at each checkpoint of a run, with their log–log slopes against t."""
    from gaugec import measure

    model, inputs, wide, likelihood, layers = _measure_setup(args, model, inputs)
    try:
        states = [torch.load(ck, map_location="cpu", weights_only=True) for ck in args.along]
    except Exception as exc:  # noqa: BLE001 - reported as a usage error
        raise UsageError(f"cannot read a checkpoint: {type(exc).__name__}: {exc}") from exc
    for ck, st in zip(args.along, states):
        if not isinstance(st, dict):
            raise UsageError(f"checkpoint {ck} is not a state dict")
        _check_finite(st, ck)
    states = [{k: v.double() if v.is_floating_point() else v for k, v in st.items()} for st in states]
    for layer in layers:
        try:
            out = measure.readings_along(model, states, wide, None, layer, ts=args.ts, fisher="true",
                                         likelihood=likelihood)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        print(f"layer {layer} (true Fisher, {out.readings[0].n_rows} rows)")
        print(f"  {'t':>10} {'σ_min':>10} {'λ⁺_min':>10} {'log det⁺':>10} {'dead':>5}")
        for t, r in zip(out.ts, out.readings):
            print(f"  {t:>10.4g} {r.sigma_min:>10.3e} {r.lambda_min_plus:>10.3e} {r.logdet_plus:>10.2f} {r.n_dead:>5}")
        for name, (slope, r2) in out.slopes.items():
            print(f"  slope of {name:<16} {slope:+.3f} (R² {r2:.3f})")
    return 0


def _measure_plots(out_dir, spectra, curves):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("\n(matplotlib not installed: no plots; pip install 'gaugec[plot]')")
        return
    import numpy as np

    os.makedirs(out_dir, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for layer, ev in spectra.items():
        ax.semilogy(np.arange(1, len(ev) + 1), ev / ev.max(), ".", ms=3, label=layer)
    ax.set_xlabel("eigenvalue index (ascending)")
    ax.set_ylabel("Fisher eigenvalue / largest")
    ax.set_title("parameter Fisher spectra per layer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "spectra.png"), dpi=120)
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, rd in curves:
        if rd.kind != "gauge":
            ax.loglog(rd.ts, np.maximum(rd.fisher, 1e-300), "o-", ms=3, label=f"{label}: k={rd.order:.2f}")
    ax.set_xlabel("t (distance along the approach)")
    ax.set_ylabel("uᵀF(θ + t u)u")
    ax.set_title("directional Fisher of the dead directions (gauges read zero and are omitted)")
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "slopes.png"), dpi=120)
    print(f"\nwrote {out_dir}/spectra.png and {out_dir}/slopes.png")


def cmd_zoo(args) -> int:
    from gaugec import zoo

    for name, fn in zoo.ZOO.items():
        print(f"zoo:{name:<12} {(fn.__doc__ or '').strip().splitlines()[0]}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gaugec", description="find, prove and check the gauge symmetries of a model")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error")
    sub = p.add_subparsers(dest="cmd", required=True)

    def target_args(sp):
        sp.add_argument("target", help="zoo:NAME, path/to/file.py:factory, package.module:factory, hf:DIR or "
                                        "hf:MODEL_TYPE")
        sp.add_argument("--weights", action="store_true",
                        help="hf:DIR: load the directory's safetensors (default: the meta device, no weights)")
        sp.add_argument("--loss", default="cross_entropy", choices=["cross_entropy", "mse", "none"],
                        help="what f is: log-probabilities (cross_entropy) or the raw output")
        sp.add_argument("--tracer", default="export", choices=["export", "fx"])

    sp = sub.add_parser("inspect", parents=[common], help="print the gauges found")
    target_args(sp)
    sp.add_argument("--explain", action="store_true", help="list barriers, refusals and cited lemmas")
    sp.add_argument("--json", action="store_true", help="print the plan as JSON")
    sp.add_argument("--html", metavar="FILE", help="also write the gauge picture (a map of which gauge moves which "
                    "parameter, coloured by family) as one HTML page")
    sp.add_argument("--png", metavar="FILE", help="also write the map as a PNG (needs matplotlib)")
    sp.set_defaults(fn=cmd_inspect)
    sp = sub.add_parser("check", parents=[common], help="re-derive, re-prove, re-check; compare with a lock file")
    target_args(sp)
    sp.add_argument("--lock", help="lock file to compare with (or write with --update)")
    sp.add_argument("--update", action="store_true", help="write the lock file instead of comparing")
    sp.add_argument("--fresh-proofs", action="store_true", help="ignore the lemma cache: run sympy on every lemma")
    sp.set_defaults(fn=cmd_check)
    sp = sub.add_parser("verify", parents=[common], help="print the Jacobian oracle report")
    target_args(sp)
    sp.add_argument("--html", metavar="FILE", help="also write the gauge picture with the oracle's found and missed "
                    "dimensions per module")
    sp.add_argument("--png", metavar="FILE", help="also write the map with the missed modules as a PNG (needs "
                    "matplotlib)")
    sp.set_defaults(fn=cmd_verify)
    sp = sub.add_parser("measure", parents=[common], help="classify gauges and dead directions at a checkpoint")
    target_args(sp)
    sp.add_argument("--checkpoint", help="a state_dict saved with torch.save (default: the factory's weights)")
    sp.add_argument("--along", nargs="+", metavar="CKPT",
                    help="read the layers at each of these checkpoints and fit slopes against --ts")
    sp.add_argument("--ts", nargs="+", type=float, help="approach parameter of each --along checkpoint "
                    "(default 1, 2, ...)")
    sp.add_argument("--layer", action="append", help="submodule whose parameters to read (repeatable)")
    sp.add_argument("--top", type=int, default=3, help="dead directions per layer")
    sp.add_argument("--samples", type=int, default=64, help="the example batch is repeated this many times, "
                    "with fresh random inputs, for the layer Fisher")
    sp.add_argument("--out", default="gaugec-measure", help="folder for the PNG plots")
    sp.set_defaults(fn=cmd_measure)
    sp = sub.add_parser("demo", parents=[common], help="compile and verify a built-in model (make demo)")
    sp.add_argument("--model", default="llama")
    sp.set_defaults(fn=cmd_demo)
    sp = sub.add_parser("zoo", parents=[common], help="list the built-in models")
    sp.set_defaults(fn=cmd_zoo)
    return p


def main(argv=None) -> int:
    """Exit codes: 0 all holds, 1 a check failed, 2 anything else (usage, capture, input, environment), each
    error one line on stderr (``--debug``: with its traceback)."""
    from gaugec.capture import CaptureError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("gaugec: interrupted", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - every error is one line and exit 2; --debug shows the traceback
        if args.debug:
            traceback.print_exc()
        text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())[:600]
        if isinstance(exc, UsageError):
            print(f"gaugec: error: {text}", file=sys.stderr)
        elif isinstance(exc, CaptureError):
            print(f"gaugec: capture failed: {text}", file=sys.stderr)
        else:
            print(f"gaugec: error: {type(exc).__name__}: {text}" + ("" if args.debug else
                  " (gaugec --debug ... shows the traceback)"), file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

"""Coverage of the installed transformers: every causal-LM, masked-LM and image-classification architecture, built
tiny (hidden 16, one layer, eps 0, dropout 0), compiled, checked for soundness and judged by the Jacobian oracle.

Each architecture ends in one of: ``not built tiny`` (the config cannot be made small with the attributes this
sweep knows, or the tiny model does not run: not our failure), ``export fails`` (torch.export itself cannot capture
the tiny model), ``COMPILE FAILED`` (gaugec's failure), ``timeout``, or compiled, with the oracle's verdict: sound or
UNSOUND, found / nullity, the missed dimensions that are dead coordinates (entries f never reads: position rows
beyond the sequence, padding rows) split from real misses, and the module holding most of the real misses."""
from __future__ import annotations

import json
import os
import signal
import time
import warnings

import torch

from gaugec.bench.tables import md_table
from gaugec.progress import say, track

V = 32
SIZES = dict(vocab_size=V, hidden_size=16, intermediate_size=24, moe_intermediate_size=8, ffn_hidden_size=24,
             shared_expert_intermediate_size=8, num_hidden_layers=1, num_layers=1, n_layer=1, num_attention_heads=2,
             n_head=2, num_heads=2, num_key_value_heads=1, head_dim=8, num_experts=4, num_local_experts=4,
             n_routed_experts=4, moe_num_experts=4, num_experts_per_tok=2, moe_topk=2, top_k=2, n_group=1,
             topk_group=1, first_k_dense_replace=0, max_position_embeddings=16, n_positions=16, use_cache=False,
             rms_norm_eps=0.0, layer_norm_eps=0.0, layer_norm_epsilon=0.0, norm_eps=0.0, pad_token_id=0,
             bos_token_id=0, eos_token_id=0, kv_lora_rank=8, q_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4,
             v_head_dim=8, num_shared_experts=1, n_shared_experts=1, router_hidden_size=8, n_embd=16, d_model=16,
             embed_dim=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, dropout=0.0,
             attention_dropout=0.0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, hidden_dropout=0.0,
             image_size=16, patch_size=4, num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
             num_labels=3, type_vocab_size=2)
MAX_PARAMS = 200_000
# the oracle's nullity needs the n x n Gram of the Jacobian (8 n² bytes and its eigendecomposition): above this many
# parameters only its matrix-free soundness check runs
ORACLE_MAX_PARAMS = 8_000
TIME_LIMIT_S = 240          # for the compile (gaugec's own cost: over it, a timeout counted as our failure)
# for the oracle's nullity (the n x n Gram's eigendecompositions, repeated while the nullity falls: minutes for a
# tiny MoE near ORACLE_MAX_PARAMS); over it, the compiled plan gets the matrix-free soundness check only
ORACLE_LIMIT_S = 120
# the oracle adds Jacobian rows until its nullity stops falling; starting at 2 n rows (its default is 4 n) keeps a
# classifier with 3 outputs per example from drawing thousands of images a batch
ROW_FACTOR = 2.0


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def architectures() -> list[tuple[str, str]]:
    """(task, model type) for every causal-LM, masked-LM and image-classification mapping entry."""
    from transformers.models.auto import modeling_auto as ma

    out = []
    for task, mapping in (("causal-lm", ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
                          ("masked-lm", ma.MODEL_FOR_MASKED_LM_MAPPING_NAMES),
                          ("image-cls", ma.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)):
        out += [(task, t) for t in mapping]
    return out


def tiny(task: str, model_type: str):
    import transformers as T

    cfg = T.AutoConfig.for_model(model_type)
    for k, v in SIZES.items():
        if hasattr(cfg, k):
            setattr(cfg, k, v)
    if hasattr(cfg, "qk_rope_head_dim"):          # multi-head latent attention (as examples/hf_moe_sweep.py)
        cfg.head_dim = cfg.qk_rope_head_dim
        cfg.num_key_value_heads = cfg.num_attention_heads
    auto = {"causal-lm": T.AutoModelForCausalLM, "masked-lm": T.AutoModelForMaskedLM,
            "image-cls": T.AutoModelForImageClassification}[task]
    with torch.device("meta"):                     # counted before any weight is allocated
        n = sum(p.numel() for p in auto.from_config(cfg).parameters())
    if n > MAX_PARAMS:
        raise ValueError(f"{n} parameters: a size attribute this sweep does not know")
    torch.manual_seed(0)
    model = auto.from_config(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    if task == "image-cls":
        size = getattr(cfg, "image_size", 16)
        size = size if isinstance(size, int) else size[0]
        inputs = (torch.randn(1, getattr(cfg, "num_channels", 3), size, size, generator=gen),)
    else:
        inputs = (torch.randint(1, V, (2, 6), generator=gen),)
    with torch.no_grad():
        model(*inputs)
    return model, inputs


def _top_missed_module(rep) -> str:
    rows = sorted(rep.modules, key=lambda r: -r.missed)
    return f"{rows[0].module} ({rows[0].missed:.1f})" if rows and rows[0].missed > 0.5 else ""


def run_one(task: str, model_type: str) -> dict:
    import gaugec

    row = {"task": task, "arch": model_type}
    t0 = time.perf_counter()
    try:
        model, inputs = tiny(task, model_type)
    except Exception as exc:  # noqa: BLE001 - a config this sweep cannot make small: reported apart
        return {**row, "status": "not built tiny", "why": f"{type(exc).__name__}: {str(exc)[:80]}"}
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIME_LIMIT_S)
    running = f"the compile over {TIME_LIMIT_S} s"      # what a timeout interrupted, for its row
    try:
        try:
            plan = gaugec.compile(model, inputs, memo=False)   # what discovery costs, not the memo
        except _Timeout:
            raise
        except Exception as exc:  # noqa: BLE001
            try:
                with gaugec.capture.dense_experts(model):
                    torch.export.export(model, inputs, strict=False)
                status = "COMPILE FAILED"
            except Exception:  # noqa: BLE001
                status = "export fails"
            return {**row, "status": status, "why": f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}",
                    "seconds": time.perf_counter() - t0}
        signal.alarm(ORACLE_LIMIT_S)
        n = sum(p.numel() for p in model.parameters())

        def soundness_only(status, why):
            nonlocal running
            running = f"the soundness check over {ORACLE_LIMIT_S} s"
            try:
                rep = gaugec.verify(model, inputs, plan, soundness_only=True)
            except _Timeout:
                raise
            except Exception as exc:  # noqa: BLE001 - as the oracle's own failures below: a row, not a crash
                return {**row, "status": "oracle failed", "why": f"{why}; the soundness check: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}",
                        "generators": sum(g.dim for g in plan.gauges), "seconds": time.perf_counter() - t0}
            return {**row, "status": status, "sound": rep.sound,
                    "why": f"{why}: soundness only ({'sound' if rep.sound else 'UNSOUND'})",
                    "generators": sum(g.dim for g in plan.gauges), "seconds": time.perf_counter() - t0}

        if n > ORACLE_MAX_PARAMS:
            return soundness_only("too large for the oracle", f"{n} parameters")
        try:
            rep = gaugec.verify(model, inputs, plan, row_factor=ROW_FACTOR)
        except _Timeout:
            signal.alarm(ORACLE_LIMIT_S)
            return soundness_only("oracle timeout", f"the oracle's nullity over {ORACLE_LIMIT_S} s")
        except Exception as exc:  # noqa: BLE001 - the oracle's own limits (functorch, a non-finite Jacobian)
            return {**row, "status": "oracle failed", "why": f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}",
                    "generators": sum(g.dim for g in plan.gauges), "seconds": time.perf_counter() - t0}
        return {**row, "status": "compiled", "sound": rep.sound, "found": rep.found_rank, "nullity": rep.nullity,
                "missed": rep.missed, "dead_missed": rep.dead_missed, "rejected": len(plan.rejected),
                "top": _top_missed_module(rep), "seconds": time.perf_counter() - t0}
    except _Timeout:
        if running.startswith("the soundness"):    # compiled: the oracle's own check ran out of time, not gaugec
            return {**row, "status": "oracle timeout", "sound": None, "why": f"{running}: not judged",
                    "seconds": time.perf_counter() - t0}
        return {**row, "status": "timeout", "why": running, "seconds": time.perf_counter() - t0}
    finally:
        signal.alarm(0)


ROWS = "docs/data/coverage_rows.jsonl"


def bench_coverage(only=None, rows_path: str | None = ROWS, resume: bool = False,
                   budget_s: float | None = None) -> tuple[list[dict], int]:
    """Run the sweep; each row is appended to ``rows_path`` as it finishes (a JSON line), so a long sweep can stop
    (``budget_s``: no architecture is started after that many seconds) and go on (``resume``: architectures already
    there are not run again). Returns (rows, architectures asked)."""
    t0 = time.perf_counter()
    warnings.simplefilter("ignore")
    done = {}
    if resume and rows_path and os.path.exists(rows_path):
        with open(rows_path) as fh:
            for line in fh:
                r = json.loads(line)
                done[(r["task"], r["arch"])] = r
    elif rows_path and os.path.exists(rows_path):
        os.remove(rows_path)
    asked = [(t, a) for t, a in architectures() if not only or a in only]
    rows = []
    for task, arch in track(asked, "coverage", label=lambda ta: ta[1]):
        if (task, arch) in done:
            rows.append(done[(task, arch)])
            continue
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            continue
        row = run_one(task, arch)
        rows.append(row)
        say(_line(row))
        if rows_path:
            with open(rows_path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
    return rows, len(asked)


def _line(r) -> str:
    if r["status"] != "compiled":
        return f"{r['task']:<10} {r['arch']:<28} {r['status']}: {r.get('why', '')}"
    return (f"{r['task']:<10} {r['arch']:<28} {'sound' if r['sound'] else 'UNSOUND'} found {r['found']} / "
            f"{r['nullity']} (dead {r['dead_missed']}) {r['seconds']:.0f}s")


def format_coverage(rows) -> str:
    built = [r for r in rows if r["status"] != "not built tiny"]
    compiled = [r for r in built if r["status"] == "compiled"]      # compiled and judged by the oracle
    ours = [r for r in built if r["status"] in ("COMPILE FAILED", "timeout")]
    unjudged = [r for r in built if r["status"] in ("oracle failed", "too large for the oracle", "oracle timeout")]
    sound = [r for r in compiled if r["sound"]]
    whole = [r for r in compiled if r["missed"] - r["dead_missed"] == 0]
    found = sum(r["found"] for r in compiled)
    live = sum(r["nullity"] - r["dead_missed"] for r in compiled)
    head = [f"- architectures: {len(rows)}; built tiny: {len(built)} (the rest: configs this sweep cannot make small)",
            f"- compiled: **{len(compiled) + len(unjudged)} / {len(built)} = "
            f"{100 * (len(compiled) + len(unjudged)) / max(len(built), 1):.0f}%** (gaugec's failures, compile or "
            f"timeout: {len(ours)}; torch.export itself fails: {sum(r['status'] == 'export fails' for r in built)}; "
            f"compiled but not judged by the oracle (too large, too slow, or it cannot run on the model): "
            f"{len(unjudged)}; of those checked for soundness only, unsound: "
            f"{sum(r['status'] in ('too large for the oracle', 'oracle timeout') and r.get('sound') is False for r in built)})",
            f"- sound (every generator in the oracle's null space, no false gauge): **{len(sound)} / {len(compiled)}**",
            f"- found = oracle (dead coordinates aside): **{len(whole)} / {len(compiled)}**; found "
            f"{found:,} of {live:,} live null dimensions ({100 * found / max(live, 1):.1f}%)"]
    table = []
    for r in rows:
        if r["status"] == "compiled":
            table.append([r["task"], r["arch"], "yes", "yes" if r["sound"] else "**NO**",
                          f"{r['found']} / {r['nullity']}", str(r["dead_missed"]),
                          str(r["missed"] - r["dead_missed"]), r["top"], f"{r['seconds']:.0f}"])
        else:
            table.append([r["task"], r["arch"], r["status"], "", "", "", "", r.get("why", "").replace("|", "/"),
                          f"{r['seconds']:.0f}" if "seconds" in r else ""])
    return "\n".join(head) + "\n\n" + "\n".join(md_table(
        ["task", "architecture", "compiled", "sound", "found / nullity", "dead", "missed (live)",
         "most missed in (or why)", "s"], table))

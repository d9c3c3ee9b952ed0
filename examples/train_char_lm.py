"""Train a small Llama-style character LM with AdamW, DDCAdam, torch's Muon + AdamW and DDCMuon (the same data,
batches and hyperparameters within each family), and plot the four curves in one PNG.

    python examples/train_char_lm.py                      # text: a few Python standard-library modules
    python examples/train_char_lm.py --text my.txt --steps 2000 --out curves.png
    python examples/train_char_lm.py --only AdamW DDCAdam

Needs matplotlib for the PNG (pip install 'gaugec[plot]'); without it the curves are printed only.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from gaugec.optim import tasks


def progress_bar(label: str, total: int):
    start = time.perf_counter()

    def show(step, train, val):
        done = int(30 * step / total)
        rate = step / max(time.perf_counter() - start, 1e-9)
        sys.stdout.write(f"\r{label:8s} [{'#' * done}{'.' * (30 - done)}] {step}/{total} "
                         f"train {train:.3f} val {val:.3f} ({rate:.1f} steps/s)")
        sys.stdout.flush()
        if step == total:
            sys.stdout.write("\n")

    return show


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", help="a text file to train on (default: standard-library sources)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-3, help="AdamW's, and the AdamW path's of the Muon arms")
    ap.add_argument("--muon-lr", type=float, default=2e-2, help="the Muon path's")
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--only", nargs="*", help="a subset of: AdamW DDCAdam Muon DDCMuon")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="char_lm_curves.png")
    args = ap.parse_args(argv)

    text = tasks.char_corpus(args.text)
    hp = dict(lr=args.lr, weight_decay=args.weight_decay)
    muon_hp = dict(lr=args.muon_lr, adamw_lr=args.lr, weight_decay=args.weight_decay)
    arms = {"AdamW": tasks.adamw_factory(**hp), "DDCAdam": tasks.ddcadam_factory(**hp),
            "Muon": tasks.muon_factory(**muon_hp), "DDCMuon": tasks.ddcmuon_factory(**muon_hp)}
    curves = {}
    for label, factory in arms.items():
        if args.only and label not in args.only:
            continue
        curves[label] = tasks.train_char_lm(factory, steps=args.steps, batch=args.batch, seq=args.seq, text=text,
                                            eval_every=max(1, args.steps // 30), device=args.device,
                                            progress=progress_bar(label, args.steps))
    for label, c in curves.items():
        print(f"{label:8s} final train {c.train[-1]:.4f}  val {c.val[-1]:.4f}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'gaugec[plot]')")
        return curves
    fig, ax = plt.subplots(figsize=(6.4, 4))
    colours = {"AdamW": "tab:blue", "DDCAdam": "tab:orange", "Muon": "tab:green", "DDCMuon": "tab:red"}
    for label, c in curves.items():
        colour = colours[label]
        ax.plot(c.steps, c.train, color=colour, label=f"{label} train")
        ax.plot(c.steps, c.val, color=colour, linestyle="--", label=f"{label} validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / char)")
    ax.set_title(f"char LM: lr {args.lr} (Muon {args.muon_lr}), weight decay {args.weight_decay}", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return curves


if __name__ == "__main__":
    main()

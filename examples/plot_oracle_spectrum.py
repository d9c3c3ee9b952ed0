"""Plot the Jacobian oracle's spectrum for the built-in 1-layer Llama (docs/img/llama_oracle_spectrum.png).

    python examples/plot_oracle_spectrum.py        # needs matplotlib (pip install 'gaugec[plot]')
"""
import sys

import numpy as np

import gaugec
from gaugec import zoo


def main(out="docs/img/llama_oracle_spectrum.png"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, inputs = zoo.llama()
    plan = gaugec.compile(model, inputs)
    rep = gaugec.verify(model, inputs, plan)
    ev = np.clip(rep.eigenvalues / rep.eigenvalues[-1], 1e-20, None)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    idx = np.arange(1, len(ev) + 1)
    ax.semilogy(idx, ev, ".", ms=3, color="#333")
    ax.axhline(rep.threshold, color="#c33", lw=1, ls="--", label=f"threshold {rep.threshold:.0e} x max")
    ax.axvline(rep.found_rank + 0.5, color="#36c", lw=1.5,
               label=f"found by gaugec: {rep.found_rank} (norm gains, RoPE Q/K, V/O, SwiGLU, logit shift, stream scale "
                     "and rotation)", ls=":")
    ax.axvline(rep.nullity + 0.5, color="#c93", lw=1.5,
               label=f"oracle nullity: {rep.nullity} (missed {rep.missed})")
    ax.set_xlim(0, 200)
    ax.set_xlabel("eigenvalue index (ascending)")
    ax.set_ylabel("eigenvalue of JᵀJ / largest")
    ax.set_title(f"Jacobian oracle, 1-layer Llama ({rep.n_params} parameters, float64): gap {rep.gap:.1e}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    print(f"wrote {out}: nullity {rep.nullity}, found {rep.found_rank}, missed {rep.missed}")


if __name__ == "__main__":
    main(*sys.argv[1:])

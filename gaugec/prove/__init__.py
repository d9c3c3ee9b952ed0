"""Proofs: each gauge's certificate lists the lemmas its derivation used and the nodes they were applied at.

``Proof.check()`` re-runs every cited lemma through sympy (cached by content hash) and records the verdicts; the
numeric check (a large random group element applied to the float64 model, :mod:`gaugec.prove.numeric`) is recorded
beside it by the compiler. Lemmas live next to the rules that cite them (``gaugec.discover.rules``).
"""
from gaugec.prove.lemmas import LEMMAS, ProofError, check_lemma, lemma  # noqa: F401
from gaugec.prove.proof import Proof  # noqa: F401

"""A gauge's certificate: the lemmas its derivation used, the nodes they were applied at, and the verdicts of
sympy (``check``) and of the numeric check (recorded by :mod:`gaugec.prove.numeric`)."""
from __future__ import annotations

import dataclasses

from gaugec.prove.lemmas import LEMMAS, check_lemma


@dataclasses.dataclass
class Proof:
    steps: list[tuple[str, str]]                 # (lemma id, graph node it was applied at)
    lemma_status: dict[str, bool] = dataclasses.field(default_factory=dict)
    numeric_residual: float | None = None
    numeric_tol: float | None = None
    numeric_note: str = ""

    @property
    def lemmas(self) -> list[str]:
        return sorted({lid for lid, _ in self.steps})

    def check(self, use_cache: bool = True) -> bool:
        """Run sympy on every cited lemma; True iff all hold."""
        self.lemma_status = {}
        for lid in self.lemmas:
            if lid not in LEMMAS:
                self.lemma_status[lid] = False
                continue
            self.lemma_status[lid] = check_lemma(lid, use_cache=use_cache)
        return self.symbolic_ok

    @property
    def symbolic_ok(self) -> bool:
        return bool(self.lemma_status) and all(self.lemma_status.values()) and \
            set(self.lemma_status) == set(self.lemmas)

    @property
    def numeric_ok(self) -> bool | None:
        if self.numeric_residual is None:
            return None
        return self.numeric_residual <= self.numeric_tol

    @property
    def status(self) -> str:
        if not self.lemma_status:
            return "unchecked"
        if not self.symbolic_ok:
            bad = [k for k, v in self.lemma_status.items() if not v]
            return f"FAILED ({', '.join(bad) or 'missing lemma'})"
        if self.numeric_ok is False:
            return "FAILED (numeric)"
        return "proved" if self.numeric_ok else "proved (symbolic only)"

    def to_dict(self) -> dict:
        return {"steps": [list(s) for s in self.steps], "lemma_status": self.lemma_status,
                "numeric_residual": self.numeric_residual, "numeric_tol": self.numeric_tol,
                "numeric_note": self.numeric_note}

    @classmethod
    def from_dict(cls, d: dict) -> "Proof":
        return cls([tuple(s) for s in d["steps"]], {k: bool(v) for k, v in d.get("lemma_status", {}).items()},
                   d.get("numeric_residual"), d.get("numeric_tol"), d.get("numeric_note", ""))

"""Closed-form learning coefficients used as ground truth.

Reduced-rank regression y = B A x + noise, x ∈ ℝ^M, y ∈ ℝ^N, A ∈ ℝ^{H x M}, B ∈ ℝ^{N x H}, true rank r
(Aoyagi & Watanabe 2005, "Stochastic complexities of reduced rank regression in Bayesian estimation"):

case 1  N + r ≤ M + H,  M + r ≤ N + H,  H + r ≤ M + N:
        λ = [2(H + r)(M + N) − (M − N)² − (H + r)²] / 8,      m = 1  if M + H + N + r is even
        λ = [2(H + r)(M + N) − (M − N)² − (H + r)² + 1] / 8,  m = 2  if it is odd
case 2  M + H < N + r:  λ = (H M − H r + N r) / 2,  m = 1
case 3  N + H < M + r:  λ = (H N − H r + M r) / 2,  m = 1
case 4  M + N < H + r:  λ = M N / 2,                m = 1
"""
from __future__ import annotations

from fractions import Fraction


def rrr_learning_coefficient(M: int, N: int, H: int, r: int) -> tuple[Fraction, int]:
    """(λ, multiplicity) of reduced-rank regression with M inputs, N outputs, H hidden units, true rank r ≤ H."""
    if min(M, N, H) < 1 or not 0 <= r <= H:
        raise ValueError(f"need M, N, H ≥ 1 and 0 ≤ r ≤ H, got M={M} N={N} H={H} r={r}")
    if M + H < N + r:
        return Fraction(H * M - H * r + N * r, 2), 1
    if N + H < M + r:
        return Fraction(H * N - H * r + M * r, 2), 1
    if M + N < H + r:
        return Fraction(M * N, 2), 1
    base = 2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2
    if (M + H + N + r) % 2 == 0:
        return Fraction(base, 8), 1
    return Fraction(base + 1, 8), 2

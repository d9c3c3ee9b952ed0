"""The block kinds a multiplicative gauge is made of: one registry entry per kind, with everything a kind needs.

A multiplicative gauge is a product of blocks, each a matrix group acting on a few coordinates:

  gl     GL(m)          A (m x m invertible)
  rot2   R+ x SO(2)     a I + b J on a rotary pair (the RoPE commutant)
  scalar R*             c != 0 on one coordinate
  pos    R+             c > 0 on one coordinate
  scale  R+             c I_m, c > 0, on m coordinates at once (what passes a normalisation at eps = 0)
  orth   O(m)           R with RᵀR = I (a rotation of an RMS-normalised stream; the readers see it conjugated by the
                        norm's gain, D R D⁻¹: gaugec.plan.action)
  orth1  O(m - 1)       R with RᵀR = I and R 1 = 1 (a rotation of a LayerNorm-normalised stream: centring commutes)
  shear1 R^m            I + w 1ᵀ with 1 + 1ᵀw > 0: fixes every centred vector, so it moves a layer norm's output
                        only through its bias (conjugated by the gain, D (I + w 1ᵀ) D⁻¹; no DDC section yet)

Each :class:`BlockKind` says how big its group is (``dim``), how it is written (``label``), how to draw a large
random element and a Lie-algebra basis (the numeric checks and the generators), and how to balance a block on the
canonical section of the DDC optimizers (``gaugec.optim.section``): for a block acting on rows by A ("direct"
rows X) and by A^-T ("dual" rows Y), with P = Σ X Xᵀ and Q = Σ Y Yᵀ,

  ``solve(P, Q)``        the minimum-norm point's A and A^-T (Kempf–Ness: min ‖A X‖² + ‖A^-T Y‖²),
  ``first_order(P, Q)``  the per-step balancing element for a block near balance (no eigensolver),
  ``stable(P, Q)``       whether the orbit is closed with a finite stabiliser (the minimum exists),
  ``orientation(m)``     the convention that fixes the compact part (O(m), SO(2), ±1) from the rows' moments.

and how big the stabiliser of such a block is (``stabiliser(P, Q)``: the dimension of {X in the algebra : X·rows = 0},
read off the ranks of the two Grams), which the orbit dimension needs (``gaugec.plan.tangent``), and the algebra
element with given coordinates in ``algebra_basis`` (``algebra_element(c, m)``, linear, differentiable), which the
tangent operator applies without listing the basis.

Adding a kind is one :func:`block_kind` entry here plus its tests. A *singleton* kind (one coordinate per block) is
reached by a rule calling ``ctx.restrict(C, name)``; the solver gives a block the restriction it met that lies
``within`` every other it met (R+ within R*: ReLU after a diagonal product is R+), and fixes a block whose
restrictions have no such common kind. The plan and the executor look every kind up here.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator

import torch

# A GL block counts as stable when both Grams are positive definite with λ_min > STABLE_RTOL · (mean eigenvalue):
# far above the rounding of an exactly rank-deficient Gram (~1e-16 in float64, ~1e-7 in float32) and far below the
# conditioning of a generic block.
STABLE_RTOL = {torch.float64: 1e-11, torch.float32: 1e-4}


@dataclasses.dataclass(frozen=True)
class BlockKind:
    name: str
    label: Callable[[int], str]                          # m -> "GL(m)"
    dim: Callable[[int], int]                            # m -> dimension of the group
    random_element: Callable[..., torch.Tensor]          # (m, gen, log_spread, gl_log_spread) -> [m, m] float64
    algebra_basis: Callable[[int], Iterator[torch.Tensor]]
    solve: Callable                                      # (P, Q) -> (A, A^-T), batched [nb, m, m]
    first_order: Callable                                # (P, Q) -> (A, A^-T), batched
    stable: Callable                                     # (P, Q) -> [nb] bool
    orientation: Callable                                # moment [nb, m] -> sign [nb, m] of ±1
    singleton: bool = False                              # one coordinate per block, from a rule's restriction
    within: tuple[str, ...] = ()                         # singleton kinds whose group contains this one's
    compact: bool = False                                # no non-compact part: the section is a frame choice only
    frame: Callable | None = None                        # compact kinds: (M, moment) -> the aligning element R
    has_section: bool = True                             # False: the DDC optimizers leave its gauges out
    algebra_element: Callable | None = None              # (c [dim], m) -> Σ c_i X_i, X_i = algebra_basis(m)
    stabiliser: Callable | None = None                   # (P, Q) -> dim of the algebra fixing the rows
    scalar_step: bool = False                            # first_order is c I, read off tr P and tr Q alone


BLOCK_KINDS: dict[str, BlockKind] = {}


def block_kind(kind: BlockKind) -> BlockKind:
    BLOCK_KINDS[kind.name] = kind
    return kind


def kind(name: str) -> BlockKind:
    try:
        return BLOCK_KINDS[name]
    except KeyError:
        raise ValueError(f"unknown block kind {name!r}; known: {', '.join(BLOCK_KINDS)}") from None


# -- shared pieces ------------------------------------------------------------------------------------------------

def _uniform(gen, shape, log_spread):
    return (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * log_spread


def _traces(P, Q):
    tiny = torch.finfo(P.dtype).tiny
    trP = torch.diagonal(P, dim1=-2, dim2=-1).sum(-1).clamp_min(tiny)
    trQ = torch.diagonal(Q, dim1=-2, dim2=-1).sum(-1).clamp_min(tiny)
    return trP, trQ


def _traces_positive(P, Q):
    """tr P > 0 and tr Q > 0: the stability test of every kind whose non-compact part is one scale."""
    tiny = torch.finfo(P.dtype).tiny
    return (torch.diagonal(P, dim1=-2, dim2=-1).sum(-1) > tiny) & (torch.diagonal(Q, dim1=-2, dim2=-1).sum(-1) > tiny)


def _sym_pows(M: torch.Tensor, *powers: float) -> list[torch.Tensor]:
    """M^p for a batch of symmetric positive definite M, one eigendecomposition for all powers."""
    w, U = torch.linalg.eigh(M)
    w = w.clamp_min(torch.finfo(M.dtype).tiny)
    return [(U * w.pow(p).unsqueeze(-2)) @ U.mT for p in powers]


def _unit(*entries):
    return torch.tensor(entries, dtype=torch.float64)


# A Gram's eigenvalue counts towards its rank above GRAM_RANK_RTOL x the largest: a singular value 1e-5 x the largest
# of the rows (the Gram squares them), far above the rounding of an exactly rank-deficient Gram (~1e-16 relative).
GRAM_RANK_RTOL = 1e-10


def gram_rank(G: torch.Tensor) -> int:
    """The rank of the rows whose Gram is G (symmetric positive semi-definite, m x m)."""
    if G.numel() == 0:
        return 0
    w = torch.linalg.eigvalsh(0.5 * (G + G.mT))
    top = float(w[-1])
    return int((w > GRAM_RANK_RTOL * top).sum()) if top > 0 else 0


def _zero_rows(P, Q) -> bool:
    return float(torch.diagonal(P).sum()) <= 0 and float(torch.diagonal(Q).sum()) <= 0


def _fixed_unless_all_zero(dim: int):
    """The stabiliser of a group whose every non-zero element is invertible on the rows (c, c I, a I + b J): all of
    it when every row is zero, nothing otherwise."""
    return lambda P, Q: dim if _zero_rows(P, Q) else 0


def _orth_element(c, m):
    """Σ c_k X_k over the (i < j) basis of _orth_basis: X[j, i] = c, X[i, j] = -c."""
    i, j = torch.triu_indices(m, m, 1)
    K = torch.zeros(m, m, dtype=c.dtype, device=c.device).index_put((i, j), c)
    return K.mT - K


def _so_dim(r: int) -> int:
    return r * (r - 1) // 2


# -- scalars: R* and R+ -------------------------------------------------------------------------------------------

def _scalar_solve(P, Q):
    """c⁴ = Q / P (tr for a 1 x 1 block)."""
    trP, trQ = _traces(P, Q)
    c = (trQ / trP).pow(0.25).reshape(-1, 1, 1)
    return c, 1.0 / c


def _sign_per_row(moment):
    """±1 per row: a positive projection ⟨row, r⟩ on the executor's fixed probe vector."""
    return torch.where(moment < 0, -1.0, 1.0).to(moment.dtype)


block_kind(BlockKind(
    "scalar", label=lambda m: "R*", dim=lambda m: 1,
    random_element=lambda m, gen, ls, gls: (1.0 if float(torch.rand(1, generator=gen)[0]) < 0.5 else -1.0)
    * torch.exp(_uniform(gen, (1, 1), ls)),
    algebra_basis=lambda m: iter([torch.ones(1, 1, dtype=torch.float64)]),
    solve=_scalar_solve, first_order=_scalar_solve, stable=_traces_positive, orientation=_sign_per_row,
    singleton=True, algebra_element=lambda c, m: c.reshape(1, 1), stabiliser=_fixed_unless_all_zero(1)))

block_kind(BlockKind(
    "pos", label=lambda m: "R+", dim=lambda m: 1,
    random_element=lambda m, gen, ls, gls: torch.exp(_uniform(gen, (1, 1), ls)),
    algebra_basis=lambda m: iter([torch.ones(1, 1, dtype=torch.float64)]),
    solve=_scalar_solve, first_order=_scalar_solve, stable=_traces_positive,
    orientation=lambda moment: torch.ones_like(moment), singleton=True, within=("scalar",),
    algebra_element=lambda c, m: c.reshape(1, 1), stabiliser=_fixed_unless_all_zero(1)))


# -- rot2: R+ x SO(2), the RoPE commutant ---------------------------------------------------------------------------

def _rotation(phi: float) -> torch.Tensor:
    return _unit([math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)])


def _rot2_random(m, gen, ls, gls):
    s = torch.exp(_uniform(gen, (1,), ls))[0]
    return s * _rotation(float(torch.rand(1, generator=gen, dtype=torch.float64)[0]) * 2 * math.pi)


def _rot2_solve(P, Q):
    """A = s R, s⁴ = tr Q / tr P; R diagonalises the balanced Gram (its compact part, by convention)."""
    trP, trQ = _traces(P, Q)
    s = (trQ / trP).pow(0.25)
    C = s[:, None, None] ** 2 * P + s[:, None, None] ** -2 * Q
    theta = 0.5 * torch.atan2(2 * C[:, 0, 1], C[:, 0, 0] - C[:, 1, 1])
    cos, sin = torch.cos(theta), torch.sin(theta)
    R = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    return s[:, None, None] * R, R / s[:, None, None]


def _common_scale(P, Q):
    """A = c I with c⁴ = tr Q / tr P: the minimum over the common scale alone (rot2's per-step step, whose rotation
    is compact and has nothing to balance; the whole solve of a "scale" block)."""
    trP, trQ = _traces(P, Q)
    eye = torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)
    c = (trQ / trP).pow(0.25)[:, None, None]
    return c * eye, eye / c


block_kind(BlockKind(
    "rot2", label=lambda m: "(R+ x SO(2))", dim=lambda m: 2, random_element=_rot2_random,
    algebra_basis=lambda m: iter([torch.eye(2, dtype=torch.float64), _unit([0.0, -1.0], [1.0, 0.0])]),
    solve=_rot2_solve, first_order=_common_scale, stable=_traces_positive, scalar_step=True,
    orientation=lambda moment: _sign_per_row(moment)[:, :1].expand_as(moment),   # the principal row's sign
    algebra_element=lambda c, m: c[0] * torch.eye(2, dtype=c.dtype, device=c.device)
    + c[1] * _unit([0.0, -1.0], [1.0, 0.0]).to(c),
    stabiliser=_fixed_unless_all_zero(2)))


# -- gl: GL(m) ----------------------------------------------------------------------------------------------------

def _gl_random(m, gen, ls, gls):
    """Singular values log-uniform in [e^-gls, e^gls], between two random rotations."""
    q1, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
    return q1 @ torch.diag(torch.exp(_uniform(gen, (m,), gls))) @ q2


def _gl_basis(m):
    for i in range(m):
        for j in range(m):
            X = torch.zeros(m, m, dtype=torch.float64)
            X[i, j] = 1.0
            yield X


def _gl_solve(P, Q):
    """AᵀA = S, S P S = Q ⇒ S = P^-½ (P^½ Q P^½)^½ P^-½ (the matrix geometric mean of P⁻¹ and Q); A = Uᵀ S^½ with
    U diagonalising the balanced Gram (decreasing), so A^-T = Uᵀ S^-½."""
    Ph, Pmh = _sym_pows(P, 0.5, -0.5)
    M = Ph @ Q @ Ph
    (Mh,) = _sym_pows(0.5 * (M + M.mT), 0.5)
    S = Pmh @ Mh @ Pmh
    A0, A0_inv = _sym_pows(0.5 * (S + S.mT), 0.5, -0.5)
    bal = A0 @ P @ A0.mT
    _, U = torch.linalg.eigh(0.5 * (bal + bal.mT))
    Ut = U.flip(-1).mT                                        # balanced Gram diagonal, decreasing
    return Ut @ A0, Ut @ A0_inv


def _gl_first_order(P, Q):
    """A damped Newton step on log‖g·θ‖² from the identity, X = (Q - P) / (2 ‖P + Q‖_F) (the scalar case to first
    order; ‖X‖ ≤ ½ keeps I ± X/2 well conditioned), applied as the Cayley transform A = (I - X/2)^-1 (I + X/2):
    symmetric, with A^-T = (I + X/2)^-1 (I - X/2) exact — no eigensolver. Newton would solve
    X (P + Q) + (P + Q) X = Q - P; dividing by ‖P + Q‖_F ≥ λ_max instead never overshoots.
    Since I + X/2 = 2I - (I - X/2), A = 2 (I - X/2)^-1 - I and A^-T = 2 (I + X/2)^-1 - I: two inverses of symmetric
    matrices M with eigenvalues in [¾, 5/4], taken together by Newton–Schulz (batched matrix products only)."""
    eye = torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)
    X = 0.5 * (Q - P) / torch.linalg.matrix_norm(P + Q).clamp_min(torch.finfo(P.dtype).tiny)[:, None, None]
    X = 0.5 * (X + X.mT)
    half = 0.5 * X
    inverses = _newton_schulz_inverse(torch.cat([eye - half, eye + half]), start=torch.cat([eye + half, eye - half]))
    return tuple(2 * inv - eye for inv in inverses.chunk(2))


def _newton_schulz_inverse(M, start):
    """M^-1 for a batch of symmetric M with ‖I - M‖₂ ≤ ¼, from ``start`` = 2I - M (the Neumann series to first order;
    a fresh tensor, used as a work buffer):
    Y ← Y (2I - M Y) squares the residual E = I - M Y, and ‖E₀‖ = ‖(I - M)²‖ ≤ 1/16, so k steps leave
    ‖E‖ ≤ 16^-(2^k): 3 steps reach 2·10⁻¹⁰ (below float32's rounding), 4 reach 5·10⁻²⁰ (below float64's). A fixed
    count keeps the step a deterministic function of the point, with no host synchronisation; on a CPU the 2k
    batched products cost less than LAPACK's per-matrix Cholesky factorisations and inverses."""
    steps = 4 if M.dtype == torch.float64 else 3
    two = 2 * torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    Y, T, Z = start, torch.empty_like(M), torch.empty_like(M)   # ``start`` is overwritten: no allocation per product
    for _ in range(steps):
        torch.baddbmm(two, M, Y, alpha=-1, out=T)
        torch.bmm(Y, T, out=Z)
        Y, Z = Z, Y
    return Y


def _gl_stable(P, Q):
    """GL(m) acting by (X, Y) ↦ (A X, A^-T Y) has a stable orbit iff P ≻ 0 and Q ≻ 0 (both legs of full rank m).
    Rank is G-invariant; numerically λ_min > STABLE_RTOL · tr/m, tested by a batched Cholesky (no eigensolver, no
    host synchronisation)."""
    ok = _traces_positive(P, Q)
    m = P.shape[-1]
    rtol = STABLE_RTOL.get(P.dtype, STABLE_RTOL[torch.float32])
    eye = torch.eye(m, dtype=P.dtype, device=P.device)
    for G in (P, Q):
        tr = torch.diagonal(G, dim1=-2, dim2=-1).sum(-1)
        _, info = torch.linalg.cholesky_ex(G - (rtol * tr / m)[:, None, None] * eye)
        ok = ok & (info == 0)
    return ok


block_kind(BlockKind(
    "gl", label=lambda m: f"GL({m})", dim=lambda m: m * m, random_element=_gl_random, algebra_basis=_gl_basis,
    solve=_gl_solve, first_order=_gl_first_order, stable=_gl_stable, orientation=_sign_per_row,
    algebra_element=lambda c, m: c.reshape(m, m),
    # X P = 0 and Xᵀ Q = 0: X maps the direct rows' span to 0 and its image is orthogonal to the dual rows' span
    stabiliser=lambda P, Q: (P.shape[-1] - gram_rank(P)) * (P.shape[-1] - gram_rank(Q))))


# -- scale: R+ acting as c I_m --------------------------------------------------------------------------------------

block_kind(BlockKind(
    "scale", label=lambda m: f"R+ (c I_{m})", dim=lambda m: 1,
    random_element=lambda m, gen, ls, gls: torch.exp(_uniform(gen, (1,), ls))[0] * torch.eye(m, dtype=torch.float64),
    algebra_basis=lambda m: iter([torch.eye(m, dtype=torch.float64)]),
    solve=_common_scale, first_order=_common_scale, stable=_traces_positive, scalar_step=True,
    orientation=lambda moment: torch.ones_like(moment),
    algebra_element=lambda c, m: c[0] * torch.eye(m, dtype=c.dtype, device=c.device),
    stabiliser=_fixed_unless_all_zero(1)))


# -- orth: O(m), a rotation of a normalised stream ------------------------------------------------------------------

def _orth_random(m, gen, ls, gls):
    """exp(K) for a random skew K with entries of size ~ls: a large rotation (in SO(m), the identity component)."""
    K = _uniform(gen, (m, m), ls)
    return torch.linalg.matrix_exp(K - K.T)


def _orth_basis(m):
    for i in range(m):
        for j in range(i + 1, m):
            X = torch.zeros(m, m, dtype=torch.float64)
            X[i, j], X[j, i] = -1.0, 1.0
            yield X


def _identity_pair(P, Q):
    """A compact group keeps ‖A X‖² + ‖A^-T Y‖² (A^-T = A): every point of the orbit has the minimum norm, so the
    solve is the identity and the section is fixed by the principal axes alone (gaugec.optim.section)."""
    eye = torch.eye(P.shape[-1], dtype=P.dtype, device=P.device).expand_as(P).clone()
    return eye, eye.clone()


def _principal_axes(M, moment):
    """R = Uᵀ with M's eigenvectors as rows, eigenvalues decreasing, each row's sign making R·moment positive: R M Rᵀ
    is diagonal. None when two eigenvalues (nearly) coincide or M is zero: the frame is not defined."""
    w, U = torch.linalg.eigh(M)
    if M.shape[-1] > 1:
        gaps = (w[1:] - w[:-1]) / w[-1].clamp_min(torch.finfo(w.dtype).tiny)
        if w[-1] <= 0 or float(gaps.min()) < FRAME_GAP_RTOL:
            return None
    R = U.flip(-1).T
    return _sign_per_row(R @ moment)[:, None] * R


FRAME_GAP_RTOL = 1e-8


def _stable_all(P, Q):
    return torch.ones(P.shape[0], dtype=torch.bool, device=P.device)


block_kind(BlockKind(
    "orth", label=lambda m: f"O({m})", dim=lambda m: m * (m - 1) // 2, random_element=_orth_random,
    algebra_basis=_orth_basis, solve=_identity_pair, first_order=_identity_pair, stable=_stable_all,
    orientation=_sign_per_row, compact=True, frame=_principal_axes, algebra_element=_orth_element,
    # a skew X that kills every row (direct or dual: Xᵀ = -X) is a rotation of the rows' orthogonal complement
    stabiliser=lambda P, Q: _so_dim(P.shape[-1] - gram_rank(P + Q))))


# -- orth1: O(m - 1), the rotations that fix the all-ones vector (a LayerNorm-normalised stream) ---------------------

def centred_basis(m: int) -> torch.Tensor:
    """An orthonormal basis U of R^m whose first column is 1/√m (the rest spans the centred space 1^⊥)."""
    A = torch.eye(m, dtype=torch.float64)
    A[:, 0] = 1.0
    U, _ = torch.linalg.qr(A)
    return U * torch.sign(U[0, 0])


def _orth1_embed(Q):
    m = Q.shape[-1] + 1
    U = centred_basis(m)
    B = torch.zeros(m, m, dtype=Q.dtype)
    B[0, 0] = 1.0
    B[1:, 1:] = Q
    return U @ B @ U.T


def _orth1_basis(m):
    U = centred_basis(m)
    for K in _orth_basis(m - 1):
        B = torch.zeros(m, m, dtype=torch.float64)
        B[1:, 1:] = K
        yield U @ B @ U.T


def _orth1_element(c, m):
    U = centred_basis(m).to(c)
    B = torch.zeros(m, m, dtype=c.dtype, device=c.device)
    B[1:, 1:] = _orth_element(c, m - 1)
    return U @ B @ U.mT


def _orth1_stabiliser(P, Q):
    """Rotations of the complement of the rows and of 1 (the algebra already fixes 1)."""
    m = P.shape[-1]
    ones = torch.ones(m, 1, dtype=P.dtype, device=P.device)
    S = P + Q
    top = float(torch.diagonal(S).max()) if m else 0.0
    return _so_dim(m - gram_rank(S + max(top, 1.0) * (ones @ ones.mT)))


def _centred_axes(M, moment):
    """The principal axes of M inside the centred space (R fixes 1/√m)."""
    U = centred_basis(M.shape[-1]).to(M.dtype)
    V = U[:, 1:]
    Q = _principal_axes(V.T @ M @ V, V.T @ moment)
    return None if Q is None else _orth1_embed(Q)


block_kind(BlockKind(
    "orth1", label=lambda m: f"O({m - 1}) (fixing 1)", dim=lambda m: (m - 1) * (m - 2) // 2,
    random_element=lambda m, gen, ls, gls: _orth1_embed(_orth_random(m - 1, gen, ls, gls)),
    algebra_basis=_orth1_basis, solve=_identity_pair, first_order=_identity_pair, stable=_stable_all,
    orientation=_sign_per_row, compact=True, frame=_centred_axes, algebra_element=_orth1_element,
    stabiliser=_orth1_stabiliser))


# -- shear1: I + w 1ᵀ, the maps that fix the centred space pointwise (a layer norm's output) -------------------------

def _shear1_random(m, gen, ls, gls):
    """I + w 1ᵀ with w of size ~gls and det = 1 + 1ᵀw = e^a, a uniform in [-ls, ls] (a large element, never
    singular: the group is the component where 1 + 1ᵀw > 0)."""
    z = _uniform(gen, (m,), gls)
    a = float(_uniform(gen, (1,), ls)[0])
    w = z + (math.exp(a) - 1.0 - float(z.sum())) / m
    return torch.eye(m, dtype=torch.float64) + torch.outer(w, torch.ones(m, dtype=torch.float64))


def _shear1_basis(m):
    for i in range(m):
        X = torch.zeros(m, m, dtype=torch.float64)
        X[i, :] = 1.0
        yield X


def _shear1_stabiliser(P, Q):
    """X = w 1ᵀ: on the direct rows X R = w (1ᵀ R) vanishes only for w = 0, unless 1ᵀ R = 0 (1ᵀ P 1 = 0); on the
    dual rows Xᵀ R = 1 (wᵀ R) vanishes for w orthogonal to them."""
    m = P.shape[-1]
    ones = torch.ones(m, dtype=P.dtype, device=P.device)
    if float(ones @ P @ ones) > GRAM_RANK_RTOL * float(torch.diagonal(P).sum()):
        return 0
    return m - gram_rank(Q)


def _no_section(P, Q):
    raise NotImplementedError("a shear block (I + w 1ᵀ) has no canonical section yet: the DDC optimizers leave its "
                              "gauge out of their frame (gaugec.optim.section)")


block_kind(BlockKind(
    "shear1", label=lambda m: f"Shear({m}) (I + w 1ᵀ)", dim=lambda m: m, random_element=_shear1_random,
    algebra_basis=_shear1_basis, solve=_no_section, first_order=_no_section, stable=_no_section,
    orientation=_no_section, has_section=False,
    algebra_element=lambda c, m: c[:, None] * torch.ones(1, m, dtype=c.dtype, device=c.device),
    stabiliser=_shear1_stabiliser))

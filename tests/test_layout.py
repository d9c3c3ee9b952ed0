"""The package's house rules, checked: no import circle, no logic in __init__.py, no function over 100 lines, every
block kind complete and consistent, every family's lemmas cited, and rules that raise are loud in strict mode."""
import ast
import pathlib
import subprocess
import sys

import networkx as nx
import pytest
import torch
import torch.nn as nn

import gaugec
from gaugec import zoo
from gaugec.discover.families import ADDITIVE, FAMILIES, MULTIPLICATIVE
from gaugec.discover.registry import MULT_RULES, RuleError
from gaugec.groups import BLOCK_KINDS

PACKAGE = pathlib.Path(gaugec.__file__).parent


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _top_level_imports(name: str, path: pathlib.Path, modules) -> set[str]:
    """The gaugec modules ``name`` imports when it is imported (module-level statements, not function bodies)."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gaugec"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in modules else node.module)
    return out - {name}


def test_no_import_circle():
    modules = _modules()
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        graph.add_edges_from((name, dep) for dep in _top_level_imports(name, path, modules))
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import circles: {cycles[:3]}"


def test_every_module_imports_in_a_fresh_interpreter_last_first():
    names = [n for n in _modules() if not n.endswith("__main__")]
    code = "import importlib\nfor n in %r:\n    importlib.import_module(n)\n" % sorted(names, reverse=True)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_init_files_only_re_export_and_no_function_is_over_100_lines():
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        if path.name == "__init__.py":
            for node in tree.body:
                ok = isinstance(node, (ast.Import, ast.ImportFrom)) or (
                    isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) or (
                    isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id in ("__all__", "__version__")
                                                         for t in node.targets))
                assert ok, f"{path}: line {node.lineno} is logic; __init__.py files only re-export"
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 100, f"{name}.{node.name} is {length} lines"


@pytest.mark.parametrize("kind", sorted(BLOCK_KINDS))
def test_every_block_kind_is_complete_and_its_section_balances(kind):
    """An entry's pieces agree: the algebra basis has ``dim`` elements; a random element is invertible; the
    solve balances a random stable block (A P Aᵀ = A^-T Q A^-1) with A_dual = A^-T; the first-order step reduces the
    norm; the stability test holds on a generic block and is unchanged by a random group element."""
    bk = BLOCK_KINDS[kind]
    m = 1 if bk.singleton else (2 if kind == "rot2" else 3)
    gen = torch.Generator().manual_seed(0)
    assert len(list(bk.algebra_basis(m))) == bk.dim(m)
    g = bk.random_element(m, gen, 2.0, 1.0)
    assert g.shape == (m, m) and abs(float(torch.linalg.det(g))) > 1e-6
    assert bk.label(m)
    X = torch.randn(4, m, 5, generator=gen, dtype=torch.float64)
    Y = torch.randn(4, m, 7, generator=gen, dtype=torch.float64)
    if not bk.has_section:   # the DDC optimizers leave such gauges out; asking for a section is a clear error
        with pytest.raises(NotImplementedError, match="no canonical section"):
            bk.solve(X @ X.mT, Y @ Y.mT)
        return
    if kind == "rot2":       # the commutant acts on pairs whose Grams are scaled identities up to a rotation
        X, Y = X * 3.0, Y / 3.0
    P, Q = X @ X.mT, Y @ Y.mT
    A, A_dual = bk.solve(P, Q)
    assert torch.allclose(A_dual, torch.linalg.inv(A).mT, atol=1e-10)
    norm = lambda A, Ad: (A @ P @ A.mT).diagonal(dim1=-2, dim2=-1).sum(-1) + \
        (Ad @ Q @ Ad.mT).diagonal(dim1=-2, dim2=-1).sum(-1)            # noqa: E731
    if kind == "gl" or bk.singleton:   # the minimum is balanced
        assert torch.allclose(A @ P @ A.mT, A_dual @ Q @ A_dual.mT, atol=1e-9)
    eye = torch.eye(m, dtype=torch.float64).expand(4, m, m)
    assert bool((norm(A, A_dual) <= norm(eye, eye) + 1e-9).all())
    B, B_dual = bk.first_order(P, Q)
    assert bool((norm(B, B_dual) <= norm(eye, eye) + 1e-9).all())
    assert bool(bk.stable(P, Q).all())
    gP, gQ = g @ P @ g.mT, torch.linalg.inv(g).mT @ Q @ torch.linalg.inv(g)
    assert torch.equal(bk.stable(gP, gQ), bk.stable(P, Q))
    assert bk.orientation(torch.randn(4, m, generator=gen, dtype=torch.float64)).abs().eq(1).all()


FAMILY_MODELS = ["relu_mlp", "llama", "llama_gqa", "ln_mlp", "gpt2", "convnet"]


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_every_gauge_has_a_registered_family_and_kind_and_cites_its_lemmas(name):
    model, inputs = zoo.ZOO[name]()
    plan = gaugec.compile(model, inputs)
    assert plan.gauges
    for g in plan.gauges:
        family = FAMILIES[g.family]
        assert family in (MULTIPLICATIVE if g.kind == "mult" else ADDITIVE), g.name
        assert all(k in BLOCK_KINDS for k, _ in g.blocks), g.blocks
        if family.lemmas:
            assert set(family.lemmas) & set(g.proof.lemmas), (g.name, family.lemmas, g.proof.lemmas)


def test_a_rule_that_raises_is_loud_in_strict_mode_and_a_barrier_otherwise(monkeypatch):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    found = {g.family for g in gaugec.compile(model, (x,), strict=True).gauges}
    assert "positive_rescale" in found

    def broken(ctx, node):
        raise IndexError("a typo in a new rule")

    monkeypatch.setitem(MULT_RULES, "relu", broken)
    with pytest.raises(RuleError, match="relu.*IndexError: a typo in a new rule"):
        gaugec.compile(model, (x,), strict=True)
    plan = gaugec.compile(model, (x,), strict=False)
    assert "positive_rescale" not in {g.family for g in plan.gauges}
    assert any("could not handle" in r.reason for r in plan.refusals)


def test_a_pattern_finder_or_seed_rule_that_raises_costs_its_gauges_not_the_compile(monkeypatch):
    """A crash in a pattern finder (the issue's RoPE matcher on a 0-d node) or a seed rule used to escape the barrier
    net as a compile failure: now it is loud in strict mode and a reported refusal otherwise."""
    from gaugec.discover.registry import PATTERNS, SEED_RULES

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)

    def broken(*args):
        raise IndexError("tuple index out of range")

    monkeypatch.setitem(PATTERNS, "rotary embedding", broken)
    with pytest.raises(RuleError, match="rotary embedding pattern.*IndexError"):
        gaugec.compile(model, (x,), strict=True)
    plan = gaugec.compile(model, (x,), strict=False)
    assert "positive_rescale" in {g.family for g in plan.gauges}
    assert any("rotary embedding pattern could not handle" in r.reason for r in plan.refusals)

    monkeypatch.setitem(SEED_RULES, "linear", [broken])
    plan = gaugec.compile(model, (x,), strict=False)
    assert "positive_rescale" not in {g.family for g in plan.gauges}
    assert any("seed rule broken could not handle" in r.reason for r in plan.refusals)


def test_a_new_block_kind_is_one_registry_entry(monkeypatch):
    """The worked example of docs/concepts.md: a singleton kind registered in gaugec.groups, reached by a rule's
    ``ctx.restrict``, flows through the solver, the proofs, the numeric check, the plan's generators and the DDC
    executor with no other change."""
    import dataclasses

    from gaugec.discover.registry import MULT_RULES
    from gaugec.optim import DDCAdam

    # the one entry (setitem: the registry is restored after the test)
    monkeypatch.setitem(BLOCK_KINDS, "halfline", dataclasses.replace(
        BLOCK_KINDS["pos"], name="halfline", label=lambda m: "(0, inf)", within=("pos", "scalar")))
    relu = MULT_RULES["relu"]

    def relu_on_the_halfline(ctx, node):
        restrict = ctx.restrict
        ctx.restrict = lambda C, kind: restrict(C, "halfline" if kind == "pos" else kind)
        return relu(ctx, node)

    monkeypatch.setitem(MULT_RULES, "relu", relu_on_the_halfline)
    model, inputs = zoo.relu_mlp()
    plan = gaugec.compile(model, inputs)
    rescale = [g for g in plan.gauges if g.family == "positive_rescale"]
    # the ReLU's rescale is on the new kind, the LeakyReLU's (another rule) keeps R+
    assert [g.group for g in rescale] == ["(0, inf)^6", "R+^5"]
    assert all(g.proof.status == "proved" for g in rescale)
    assert plan.dim == sum(g.dim for g in plan.gauges)
    opt = DDCAdam(model.parameters(), plan, lr=1e-2)
    torch.nn.functional.cross_entropy(model(*inputs), torch.zeros(len(inputs[0]), dtype=torch.long)).backward()
    opt.step()


def test_the_readme_layout_matches_the_tree():
    import re

    text = (PACKAGE.parent / "README.md").read_text()
    block = text[text.index("## Layout"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("```")]
    named = set(re.findall(r"^(gaugec/\S+)", block, flags=re.M))
    for path in named:
        assert (PACKAGE.parent / path).exists(), f"README layout names {path}, which does not exist"
    top = {f"gaugec/{p.name}" + ("/" if p.is_dir() else "") for p in PACKAGE.iterdir()
           if not p.name.startswith(("_", ".")) and (p.is_dir() or p.suffix == ".py")}
    assert top - named == set(), f"not in the README layout: {sorted(top - named)}"
    for line in block.splitlines():     # the files a package's line lists exist in it
        m = re.match(r"^(gaugec/\S+/)\s+(.*)$", line)
        for f in re.findall(r"\b([a-z_]+\.py)\b", m.group(2) if m else ""):
            assert (PACKAGE.parent / m.group(1) / f).exists(), f"{m.group(1)}{f}"

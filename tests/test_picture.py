"""The gauge picture: the HTML page names every gauge, colours exactly the (gauge, parameter) pairs it moves, and
shows the oracle's per-module misses when a report is given; the PNG needs matplotlib and says so."""
import importlib.util
import re

import pytest

import gaugec
from gaugec import zoo
from gaugec.cli import main
from gaugec.oracle import ModuleRow
from gaugec.picture import family_colours, render_html


@pytest.fixture(scope="module")
def gpt2_plan():
    model, inputs = zoo.gpt2()
    return model, inputs, gaugec.compile(model, inputs)


def test_html_map_colours_what_each_gauge_moves(gpt2_plan):
    _, _, plan = gpt2_plan
    page = render_html(plan, title="zoo:gpt2")
    colours = family_colours(g.family for g in plan.gauges)
    for g in plan.gauges:
        assert f"title='{g.name}'" in page                  # a column per gauge
        assert f"{g.name}: {g.group}, dim {g.dim}" in page
    cells = re.findall(r"<td class='cell' style='background:(#[0-9A-F]{6})' title='([^:']+):", page)
    assert len(cells) == sum(len(set(g.params)) for g in plan.gauges)
    by_name = {g.name: g for g in plan.gauges}
    assert all(colours[by_name[name].family] == c for c, name in cells)
    assert page.count("<td class='cell'></td>") == len(plan.gauges) * len(plan.signature()) - len(cells)
    assert "oracle</th>" not in page                          # no report, no oracle columns


def test_html_shows_missed_oracle_dimensions_per_module(gpt2_plan):
    model, inputs, plan = gpt2_plan
    report = gaugec.verify(model, inputs, plan)
    page = render_html(plan, report)
    assert "<th>oracle</th><th>found</th><th>missed</th>" in page
    assert f"nullity {report.nullity}, found {report.found_rank}" in page
    report.modules[0] = ModuleRow(report.modules[0].module, 1, 3.0, 1.0, 2.0)    # a module with misses
    assert "class='num missed'" in render_html(plan, report)


def test_cli_writes_the_picture(tmp_path, capsys):
    html = tmp_path / "g.html"
    assert main(["inspect", "zoo:relu_mlp", "--html", str(html)]) == 0
    assert "positive_rescale@0" in html.read_text() and f"wrote {html}" in capsys.readouterr().out
    png = tmp_path / "g.png"
    code = main(["inspect", "zoo:relu_mlp", "--png", str(png)])
    if importlib.util.find_spec("matplotlib") is None:
        assert code != 0 and "--png needs matplotlib" in capsys.readouterr().err
    else:
        assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""Progress bars: drawn on a terminal (or with GAUGEC_PROGRESS=1), nested bars on one line, silent otherwise."""
import io

from gaugec import zoo
from gaugec.progress import Progress, say, track


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_draws_on_a_terminal_and_clears_its_line(monkeypatch):
    monkeypatch.delenv("GAUGEC_PROGRESS", raising=False)
    out = Terminal()
    with Progress("oracle", total=4, stream=out) as bar:
        bar.update(2, "batch 2")
        bar.close()
    text = out.getvalue()
    assert "oracle [#####.....] 2/4 batch 2" in text
    assert text.endswith("\r")                 # cleared for whatever prints next


def test_bars_nest_on_one_line_and_say_keeps_it_whole(monkeypatch, capsys):
    monkeypatch.setenv("GAUGEC_PROGRESS", "1")
    out = Terminal()
    with Progress("coverage", total=2, stream=out) as outer:
        outer.stage("llama")
        with Progress("compile", total=4, stream=out) as inner:
            inner.update(1, "discover")
            inner.close()
            assert "coverage [..........] 0/2 llama" in out.getvalue().split("\r")[-1]
            assert "| compile [##........] 1/4 discover" in out.getvalue().split("\r")[-1]
        say("llama sound")
    assert capsys.readouterr().out == "llama sound\n"


def test_silent_when_not_a_terminal_or_turned_off(monkeypatch, capsys):
    monkeypatch.delenv("GAUGEC_PROGRESS", raising=False)
    quiet = io.StringIO()                      # a pipe or a log file
    assert list(track([1, 2, 3], "x")) == [1, 2, 3]
    with Progress("x", total=3, stream=quiet) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""
    monkeypatch.setenv("GAUGEC_PROGRESS", "0")
    term = Terminal()
    with Progress("x", stream=term) as bar:
        bar.update(1)
    assert term.getvalue() == ""


def test_compile_reports_its_stages(monkeypatch, capsys):
    import gaugec

    monkeypatch.setenv("GAUGEC_PROGRESS", "1")
    model, inputs = zoo.gelu_mlp()
    gaugec.compile(model, inputs)
    err = capsys.readouterr().err
    for stage in ("compile", "capture", "discover", "prove", "numeric check"):
        assert stage in err

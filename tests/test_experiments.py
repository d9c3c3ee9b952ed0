"""The experiments' machinery (tables, best configs, verdicts) on synthetic rows; the --quick runs are slow tests."""
import pytest

from gaugec import experiments
from gaugec.experiments import overtrain


def _rows():
    rows = []
    for opt, base in (("AdamW", 2.0), ("DDCAdam", 1.0), ("DDCAdam, no per-step sweep", 1.5)):
        for config, shift in (("lr 0.003, wd 0.1", 0.0), ("lr 0.001, wd 0.1", -0.5 if opt == "AdamW" else 0.3)):
            for seed, noise in enumerate((0.0, 0.1, -0.1)):
                v = base + shift + noise
                rows.append({"optimizer": opt, "seed": seed, "config": config, "gap": v, "best_val": v,
                             "final_train": 1.0, "final_val": v + 1, "best_step": 100,
                             "curve": {"steps": [1, 2], "train": [1, 1], "val": [v, v]}})
    return rows


def test_best_configs_tables_and_verdicts():
    rows = _rows()
    assert experiments.best_configs(rows) == {"AdamW": "lr 0.001, wd 0.1", "DDCAdam": "lr 0.003, wd 0.1",
                                              "DDCAdam, no per-step sweep": "lr 0.003, wd 0.1"}
    text = overtrain.table(rows)
    assert "Same hyperparameters" in text and "Each arm at its best config" in text
    assert "| AdamW | lr 0.003, wd 0.1 | 3 | 1.000 (1.000 / 1.000 / 1.000) | 3.000 (3.000 / 3.100 / 2.900)" in text
    assert experiments.verdict([2.0, 2.1, 1.9], [1.0, 1.1, 0.9]) == "reproduced in direction"
    assert experiments.verdict([1.0, 1.1, 0.9], [2.0, 2.1, 1.9]) == "reversed"
    assert experiments.verdict([1.0, 1.5, 0.5], [1.1, 1.6, 0.6]).startswith("not reproduced")
    assert experiments.verdict([1.0], [2.0]).startswith("undecided")
    assert "reproduced in direction" in overtrain.summary(rows)
    with pytest.raises(KeyError, match="unknown experiment"):
        experiments.load("nope")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["overtrain", "vit", "grokking"])
def test_quick_run_writes_rows_with_every_arm(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = experiments.main([name, "--quick", "--write"])
    assert {r["optimizer"] for r in rows} >= {"DDCAdam", "AdamW"} or {r["optimizer"] for r in rows} >= \
        {"DDCMuon", "Muon + AdamW"}
    assert all(r["curve"]["steps"] for r in rows)
    assert (tmp_path / "docs" / "data" / "experiments" / f"{name}.json").exists()
    assert f"experiment-{name}:begin" in (tmp_path / "docs" / "experiments.md").read_text()

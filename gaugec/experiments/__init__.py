"""The DDC paper's headline experiments at laptop scale: ``python -m gaugec.experiments NAME [--quick] [--seeds N]
[--write]``, NAME in ``overtrain`` (E1), ``vit`` (E2), ``grokking`` (E3).

Each experiment trains every arm (the base optimizer, its DDC lift, and the lift without the per-step return to
the section: the design's ablation arm) on the same model, data, batches and step budget, over the same small
learning-rate × weight-decay grid, for seeds fixed before the run. It writes its rows to
``docs/data/experiments/NAME.json`` (one per optimizer, seed and config, with the curve), prints its table and a
one-line summary, and with ``--write`` records the table in docs/experiments.md between its markers and draws
``docs/img/NAME.png``. ``--quick`` is a smoke-sized run.
"""
from gaugec.experiments.cli import EXPERIMENTS, load, main  # noqa: F401
from gaugec.experiments.common import (best_configs, by_config, mean, metric_table, plot_curves,  # noqa: F401
                                       reference_config, sweep, verdict)

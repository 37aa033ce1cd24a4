"""experiments/routellm/table.py, the table of experiment 1's summaries: its cells say what summary.md says."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

TABLE = Path(__file__).resolve().parents[1] / "experiments" / "routellm" / "table.py"


def _table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("routellm_table", TABLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_cpt_without_a_quality_gap_is_undefined_not_never() -> None:
    """A run without a quality gap writes CPT as null in every seed: the table printed "never (2)", the label of a
    level the curve never reaches, where summary.md says "undefined (no quality gap)"."""
    cell = _table().cell
    null = {"mean": None, "ci95": None, "n_missing": 2}
    assert cell(null, "cpt50") == cell(null, "apgr") == "undefined (no quality gap)"
    assert cell(null, "strong_share_at_95") == "never (2)"  # a level never reached: never, as before
    some = {"mean": 0.4, "ci95": 0.1, "n_missing": 1}
    assert cell(some, "cpt80") == "0.400 ± 0.100 (undefined in 1 seed(s): no quality gap)"
    assert cell(some, "cost_saving_at_95") == "0.400 ± 0.100 (1 never)"
    assert cell({"mean": 0.4, "ci95": None, "n_missing": 0}, "cpt50") == "0.400"

"""eval/evaluate.py's rows: each names the final pick it makes, and a TIE row is compared with picking
afterwards over the same models by the same pick. Needs no models."""

from __future__ import annotations

import sys

import numpy as np

import tie_lite
from conftest import ROOT

sys.path.insert(0, str(ROOT / "eval"))
sys.path.insert(0, str(ROOT / "train"))
import evaluate  # noqa: E402


def test_rows_are_unique_and_name_their_final_pick():
    rows = {v.name: v for v in evaluate.variants()}
    assert len(rows) == len(evaluate.variants())
    for pick in ("pll", "tcc"):
        assert rows[f"post-generation A+B {pick}"].ensemble.select == pick
        assert rows[f"TIE A+B {pick}"].ensemble.score == rows[f"TIE A+B {pick}"].ensemble.select == pick
    assert rows["TIE A+B top1"].ensemble.select == tie_lite.EnsembleConfig.select
    assert rows["post-generation A+B pll"].ensemble.interval > 80  # past any decode: no relay


def test_every_tie_row_of_a_pair_has_its_post_generation_row():
    rows = {v.name: v for v in evaluate.variants()}
    for name, variant in rows.items():
        after = evaluate.post_generation_of(name, variant.models)
        if name.startswith("TIE ") and len(variant.models) == 2:
            assert after in rows and rows[after].models == variant.models
            assert rows[after].ensemble.select == variant.ensemble.select
        elif not name.startswith("TIE "):
            assert after is None


def test_the_table_compares_tie_with_picking_afterwards():
    correct = {"B alone": [1, 0, 1, 0], "post-generation A+B pll": [1, 0, 1, 0], "TIE A+B pll": [1, 1, 1, 0]}
    rows = {name: {"correct": np.array(c, dtype=bool), "change_rate": 0.25 if "TIE" in name else None,
                   "relays_per_problem": 4.0, "calls": 80.0} for name, c in correct.items()}
    models = {"B alone": ("b",), "post-generation A+B pll": ("a", "b"), "TIE A+B pll": ("a", "b")}
    lines = evaluate.table(rows, models).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    column = header.index("minus post-generation (95% CI)")
    cells = {line.split("|")[1].strip(): line.strip("|").split("|")[column].strip() for line in lines[2:]}
    assert cells["TIE A+B pll"].startswith("+25.0 (")  # 3 of 4 against 2 of 4
    assert cells["post-generation A+B pll"] == cells["B alone"] == ""

"""The retained-accuracy figure of atp bench: point value and paired bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest

from atp_cli.bench.quality import paired_retention
from atp_cli.bench.report import quality_table


def _rows(n: int, ref_right: int, lost: int) -> tuple[list[bool], list[bool]]:
    """A reference right on its first `ref_right` questions and a row that loses `lost` of those, gains none."""
    ref = [i < ref_right for i in range(n)]
    ours = [i < ref_right - lost for i in range(n)]
    return ours, ref


def test_point_value_is_the_accuracy_ratio():
    ours, ref = _rows(100, 40, 2)
    retained, ci = paired_retention(ours, ref)
    assert retained == pytest.approx(38 / 40)
    assert ci is not None and ci[0] < retained < ci[1]


def test_pairing_keeps_a_subset_row_at_or_below_the_reference():
    # every question the row gets right, the reference gets right too: no resample of questions can push the
    # ratio above 1, while resampling each row on its own (unpaired) would
    ours, ref = _rows(100, 40, 2)
    _, (low, high) = paired_retention(ours, ref)
    assert high <= 1.0 and low < 0.95


def test_more_questions_narrow_the_interval():
    widths = []
    for n in (100, 400):
        ours, ref = _rows(n, int(0.4 * n), int(0.02 * n))
        _, (low, high) = paired_retention(ours, ref)
        widths.append(high - low)
    assert widths[1] < 0.7 * widths[0]


def test_the_interval_is_seeded():
    rng = np.random.default_rng(5)
    ref, ours = rng.random(80) < 0.5, rng.random(80) < 0.5
    assert paired_retention(ours, ref, seed=1) == paired_retention(ours, ref, seed=1)


def test_degenerate_and_undefined_cases():
    ours, ref = _rows(50, 20, 0)
    assert paired_retention(ours, ref) == (1.0, None)  # identical rows: every resample gives 1
    assert paired_retention([True, False], [False, False]) == (None, None)
    with pytest.raises(ValueError, match="same questions"):
        paired_retention([True], [True, False])


def test_table_prints_the_interval_and_tolerates_rows_without_it():
    base = {"budget": None, "tokens_avg": 576.0, "visual_in": 576.0, "accuracy": 0.4, "agreement": 1.0,
            "encode_s": 1.0, "prefill_s": 4.0, "ttft_s": 5.0, "decode_tok_s": None, "kv_mib": 13.0,
            "peak_rss_mib": 300.0, "by_kind": {"colour": [4, 10]}}
    rows = [dict(base, strategy="none", retained=1.0, retained_ci=None),
            dict(base, strategy="atp", accuracy=0.38, retained=0.95, retained_ci=[0.875, 1.0]),
            dict(base, strategy="old")]  # a row written before the field existed
    table = quality_table(rows).splitlines()
    assert "| retained (95 % CI) |" in table[0]
    assert table[1].count("---") == table[0].count("|") - 1
    assert "| 100.0 % |" in table[2] and "| 95.0 % (87.5-100.0) |" in table[3] and "| 40.0 % | - |" in table[4]

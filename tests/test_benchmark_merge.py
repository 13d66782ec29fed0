"""``benchmarks/run.py --merge --rows``: a run of some quality rows updates only those rows of the earlier JSON."""

from __future__ import annotations

import pytest

from benchmarks.run import merge_quality_rows


def test_rows_of_a_later_run_replace_only_theirs():
    earlier = {
        "budget_seconds_per_row": 300.0,
        "rows": {
            "oracle_remap": {"psnr_brain": 20.0},
            "phmdiff": {"psnr_brain": 19.0},
            "unet_l1": {"psnr_brain": 20.8},
            "phmdiff_shipped": {"psnr_brain": 21.6},
        },
    }
    later = {
        "budget_seconds_per_row": 300.0,
        "seed": 0,
        "rows": {
            "oracle_remap": {"psnr_brain": 20.0},
            "phmdiff": {"psnr_brain": 19.6},
            "phmdiff_shipped": {"skipped": "no checkpoint at /nonexistent"},
        },
    }
    merged = merge_quality_rows(earlier, later)
    assert merged["rows"]["phmdiff"] == {"psnr_brain": 19.6}  # retrained: the later run's
    assert merged["rows"]["unet_l1"] == {"psnr_brain": 20.8}  # not retrained: kept
    assert merged["rows"]["phmdiff_shipped"] == {"psnr_brain": 21.6}  # skipped later: the earlier figures stay
    assert merged["seed"] == 0 and list(merged["rows"]) == ["oracle_remap", "phmdiff", "unet_l1", "phmdiff_shipped"]
    assert earlier["rows"]["phmdiff"] == {"psnr_brain": 19.0}  # inputs untouched


@pytest.mark.parametrize("key, value", [("budget_seconds_per_row", 600.0), ("seed", 1)])
def test_runs_with_other_settings_are_refused(key, value):
    earlier = {"budget_seconds_per_row": 300.0, "seed": 0, "rows": {"phmdiff": {"psnr_brain": 19.0}}}
    with pytest.raises(ValueError, match=key):
        merge_quality_rows(earlier, {**earlier, key: value, "rows": {"phmdiff": {"psnr_brain": 19.6}}})

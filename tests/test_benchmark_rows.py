"""The PHMDiff rows of ``benchmarks/bench_quality.py``: each builds, trains and samples, so that a row whose
overrides the network, the training inferer or the loss refuse (e.g. a crop that is not a multiple of the token
stride) fails here, not after a long benchmark run has trained it; the capacity rows change what they say."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks import bench_quality

BASE = bench_quality.CAPACITY_BASE  # the row the capacity rows grow


def denoiser(name: str):
    return bench_quality.build_row(name, ddim_steps=2)[0].synth.denoiser


@pytest.mark.parametrize("name", list(bench_quality.PHMDIFF_ROWS))
def test_row_trains_and_samples(name):
    torch.manual_seed(0)
    step, _ = bench_quality.build_row(name, ddim_steps=2)
    assert math.isfinite(step.train_on(step.source[:2], step.target[:2]))
    pred = step.predict(step.source[:1], one_step=True)
    assert pred.shape == step.source[:1].shape and bool(torch.isfinite(pred).all())


def test_capacity_rows_change_what_they_name_and_stay_off_the_default_list():
    base = denoiser(BASE)
    deep = denoiser(f"{BASE}_depth12")
    assert len(deep.blocks) == 2 * len(base.blocks) and deep.conv_channels == base.conv_channels
    fine = denoiser(f"{BASE}_fine_grid")
    assert fine.token_stride(0) == base.token_stride(0) // 2 and fine.token_stride(1) == base.token_stride(1)
    assert denoiser(f"{BASE}_hourglass24").conv_channels == [24, 48] != base.conv_channels
    wide_fine = denoiser(f"{BASE}_hourglass32_fine_grid")
    assert wide_fine.conv_channels == [32, 64] and wide_fine.token_stride(0) == fine.token_stride(0)
    assert not set(bench_quality.CAPACITY_ROWS) & set(bench_quality.LEARNED_ROWS)

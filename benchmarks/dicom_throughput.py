"""DICOM batch throughput: series per minute for 128×128×N MR series through ``DicomBatchSynthesis`` on CPU.

The series are real anatomy (the MNI152 T1 template shipped with nilearn, resampled to 128×128×N, written one file
per slice with oblique-free axial geometry and shuffled file names). The network comes from a factory so the real
synthesiser can be measured once it exists; by default a stand-in (2·x + 1) measures the I/O and transform cost
alone: reading, sorting and validating slices, preprocessing, inversion, 16-bit rescale and writing.

    python benchmarks/dicom_throughput.py                       # stand-in network, 4 series of 128×128×32
    python benchmarks/dicom_throughput.py --slices 64 --series 2
    python benchmarks/dicom_throughput.py --network custom.networks:PHMDiffSynthesizer \
        --network-kwargs '{"spatial_dims": 2, "in_channels": 1, "out_channels": 1}' --slice-inferer
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monai.inferers import SimpleInferer, SliceInferer  # noqa: E402
from monai.transforms import (  # noqa: E402
    Compose,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    Orientationd,
    ScaleIntensityd,
)

from custom.io import DicomBatchSynthesis, DicomSeriesReader  # noqa: E402
from tests.test_dicom_fixtures import AffineStandIn, write_series  # noqa: E402


def mni_128(slices: int) -> np.ndarray:
    from nilearn.datasets import load_mni152_template

    vol = torch.as_tensor(np.asarray(load_mni152_template(resolution=2).get_fdata(), np.float32))
    vol = torch.nn.functional.interpolate(vol[None, None], size=(128, 128, slices), mode="trilinear")[0, 0]
    return (vol / vol.max() * 900.0).numpy()


def make_network(spec: str | None, kwargs: dict) -> torch.nn.Module:
    if not spec:
        return AffineStandIn()  # no learned cost: the figure is the pipeline's own
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)(**kwargs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--series", type=int, default=4)
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--network", default=None, help="module:factory (default: stand-in 2x+1)")
    p.add_argument("--network-kwargs", default="{}")
    p.add_argument("--slice-inferer", action="store_true", help="run a 2-D network slice by slice")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp())
    try:
        vol = mni_128(args.slices)
        for i in range(args.series):
            write_series(tmp / "in" / f"s{i}", vol, spacing=(1.5, 1.5, 2.0), seed=i, description=f"T1w {i}")
        pre = Compose(
            [
                LoadImaged(keys="image", reader=DicomSeriesReader()),
                EnsureChannelFirstd(keys="image"),
                Orientationd(keys="image", axcodes="RAS"),
                ScaleIntensityd(keys="image", minv=-1.0, maxv=1.0),
            ]
        )
        post = Compose([Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False)])
        inferer = SliceInferer(roi_size=(-1, -1), spatial_dim=2) if args.slice_inferer else SimpleInferer()
        network = make_network(args.network, json.loads(args.network_kwargs))
        runner = DicomBatchSynthesis(tmp / "in", tmp / "out", pre, inferer, network, post, device="cpu")
        t0 = time.perf_counter()
        records = runner.run()
        wall = time.perf_counter() - t0
        written = [r for r in records if r.status == "written"]
        per_series = [r.seconds for r in written]
        print(
            f"DICOM throughput ({'stand-in 2x+1' if not args.network else args.network}, CPU, "
            f"{torch.get_num_threads()} threads): {len(written)} series of 128x128x{args.slices}, "
            f"{wall:.2f} s total (incl. folder scan), {60 * len(written) / wall:.1f} series/min; "
            f"per series median {np.median(per_series):.2f} s"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

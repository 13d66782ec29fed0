"""DICOM batch throughput: series per minute for 128×128×N MR series through the bundle's DICOM run on CPU.

The series are real anatomy (the MNI152 T1 template shipped with nilearn, resampled to 128×128×N), written one file
per slice with oblique-free axial geometry and shuffled file names (``custom.io.write_dicom_series``). The run is the
bundle's own: ``dicom_synthesis`` of inference.json + inference_dicom.json (preprocessing, the configured inferer
and network, postprocessing without savers), the shipped weights loaded as the bundle's ``run`` loads them, so the
figure covers reading, sorting and validating slices, preprocessing, the synthesis itself (the configured
``num_inference_steps``), inversion, 16-bit rescale and writing.

    python benchmarks/dicom_throughput.py                       # 4 series of 128×128×32
    python benchmarks/dicom_throughput.py --slices 64 --series 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai.bundle import ConfigParser  # noqa: E402

from custom.data import load_mni152  # noqa: E402
from custom.io import write_dicom_series  # noqa: E402

CONFIGS = ROOT / "bundle" / "configs"


def mni_128(slices: int) -> np.ndarray:
    vol = torch.tensor(load_mni152("t1", 2)[0])  # a copy: the cached template is read-only
    vol = torch.nn.functional.interpolate(vol[None, None], size=(128, 128, slices), mode="trilinear")[0, 0]
    return (vol / vol.max() * 900.0).numpy()


def bundle_dicom_run(input_dir: Path, output_dir: Path, ckpt_path: str | None = None):
    """The bundle's ``dicom_synthesis`` (inference.json + inference_dicom.json) on CPU, its network holding the
    checkpoint as the config's ``run`` loads it."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.json"), str(CONFIGS / "inference_dicom.json")])
    parser.update(
        {
            "input_dir": str(input_dir),
            "output_dir": str(output_dir),
            "device": "$torch.device('cpu')",
            "inferer#progress": False,
            **({"ckpt_path": ckpt_path} if ckpt_path else {}),
        }
    )
    parser.parse()
    parser.get_parsed_content("network").load_state_dict(parser.get_parsed_content("checkpoint"))
    return parser.get_parsed_content("dicom_synthesis"), parser


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--series", type=int, default=4)
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--ckpt", default=None, help="weights (default: the bundle's ckpt_path, models/model.pt)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp())
    try:
        vol = mni_128(args.slices)
        for i in range(args.series):
            write_dicom_series(tmp / "in" / f"s{i}", vol, spacing=(1.5, 1.5, 2.0), seed=i, description=f"T1w {i}")
        runner, parser = bundle_dicom_run(tmp / "in", tmp / "out", args.ckpt)
        t0 = time.perf_counter()
        records = runner.run()
        wall = time.perf_counter() - t0
        written = [r for r in records if r.status == "written"]
        if not written:
            raise SystemExit(f"no series written: {[(r.status, r.reason) for r in records]}")
        result = {
            "series": len(written),
            "shape": [128, 128, args.slices],
            "spacing_mm": [1.5, 1.5, 2.0],
            "num_inference_steps": parser["num_inference_steps"],
            "bundle_spacing": parser["spacing"],
            "threads": torch.get_num_threads(),
            "wall_seconds": wall,
            "series_per_minute": 60 * len(written) / wall,
            "median_seconds_per_series": float(np.median([r.seconds for r in written])),
        }
        print(
            f"DICOM throughput (bundle network, {result['num_inference_steps']} steps per level, CPU, "
            f"{result['threads']} threads): {len(written)} series of 128x128x{args.slices}, "
            f"{wall:.2f} s total (incl. folder scan), {result['series_per_minute']:.1f} series/min; "
            f"per series median {result['median_seconds_per_series']:.2f} s"
        )
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

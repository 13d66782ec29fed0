"""Peak resident memory of NIfTI inference vs volume size: the slice inferer runs ``slice_batch_size`` slices at a
time, so memory should grow with the volume's own arrays, not with the network's activations for every slice.

Each size runs in a fresh process (peak RSS is per process): the inference config's preprocessing, the
synthesiser (tiny preset, 1 step unless told otherwise), the inverse mapping and the safe saver, on a synthetic
volume already at the config's spacing.

    OMP_NUM_THREADS=1 python benchmarks/inference_memory.py --sizes 64 128 192 --slice_batch_size 16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the bundle's `custom` package


def child(size: int, depth: int, slice_batch_size: int, preset: str, steps: int) -> dict:
    import nibabel as nib
    import numpy as np
    import torch
    from monai.bundle import ConfigParser

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        data = rng.normal(100.0, 20.0, (size, size, depth)).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), f"{tmp}/scan.nii.gz")
        del data
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundle" / "configs" / "inference.json"))
        parser.update(
            {
                "bundle_root": str(REPO / "bundle"),
                "network_def#preset": preset,
                "num_inference_steps": steps,
                "slice_batch_size": slice_batch_size,
                "inferer#progress": False,
                "output_dir": f"{tmp}/out",
                "postprocessing#transforms#2#print_log": False,
            }
        )
        pre, net = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("network").eval()
        inferer, post = parser.get_parsed_content("inferer"), parser.get_parsed_content("postprocessing")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        item = pre({"image": f"{tmp}/scan.nii.gz"})
        with torch.inference_mode():
            item["pred"] = inferer(item["image"][None], net)[0]
        post(item)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "shape": [size, size, depth],
        "voxels": size * size * depth,
        "baseline_mb": baseline,
        "loaded_mb": before,
        "peak_mb": peak,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 192])
    parser.add_argument("--depth", type=int, default=0, help="slices along the slice axis; default = size")
    parser.add_argument("--slice_batch_size", type=int, default=16)
    parser.add_argument("--preset", default="T")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        depth = args.depth or args.child
        print(json.dumps(child(args.child, depth, args.slice_batch_size, args.preset, args.steps)))
        return
    print(f"preset {args.preset}, {args.steps} step(s), slice_batch_size {args.slice_batch_size}")
    print(
        f"{'shape':>16} {'Mvoxels':>8} {'float32 MB':>10} {'RSS before MB':>13} {'peak RSS MB':>11} "
        f"{'growth MB':>9} {'growth/vol':>10} {'seconds':>8}"
    )
    for size in args.sizes:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(size),
            "--slice_batch_size",
            str(args.slice_batch_size),
            "--preset",
            args.preset,
            "--steps",
            str(args.steps),
            "--depth",
            str(args.depth),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if out.returncode:
            print(f"{size}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        volume_mb = r["voxels"] * 4 / 2**20
        growth = r["peak_mb"] - r["loaded_mb"]
        print(
            f"{'x'.join(map(str, r['shape'])):>16} {r['voxels'] / 1e6:8.2f} {volume_mb:10.1f} {r['loaded_mb']:13.0f} "
            f"{r['peak_mb']:11.0f} {growth:9.0f} {growth / volume_mb:10.1f} {r['seconds']:8.1f}"
        )


if __name__ == "__main__":
    main()

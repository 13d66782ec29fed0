"""The shipped weights (trained at 2 mm) on 1 mm demo test volumes: synthesis at native 1 mm against the bundle's
2 mm path (down-sample, synthesise, up-sample) and against 2 mm in-plane only (every 1 mm axial slice synthesised
at 2 mm in-plane, no through-plane resampling), all scored against the 1 mm target inside the brain.

The in-plane path is also run with the two sampling choices that bear on through-plane consistency: every slice
with its own sampling noise (seed = slice index, one slice per call, so its time is not comparable) instead of the
noise shared by all slices, and one DDIM step per level (the x₀ estimate from the initial noise).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/native_resolution.py --subjects 1 --out FILE.json

Generates the 1 mm test subjects first (simulated, the same subjects as the 2 mm demo test split).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc
import bench_quality as bq
from custom.data import generate_demo_dataset
from custom.metrics import blockiness, masked_psnr, through_plane_ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=1, help="1 mm test subjects to score")
    parser.add_argument("--shipped", default=str(bc.ROOT / "bundle" / "models" / "model.pt"))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="phmdiff_1mm_")) / "data"
    generate_demo_dataset(data, num_training=1, num_validation=1, num_test=args.subjects, spacing=1.0)
    cfg = bc.bundle_parser(bc.TRAIN_CONFIG, dataset_dir=str(data))
    cfg.parse()
    synth = bc.PHMDiffSynthesizer(**bc.bundle_network_config(bc.INFER_CONFIG))
    synth.load_state_dict(torch.load(args.shipped, map_location="cpu", weights_only=True))
    synth.eval()

    seed, steps = synth.seed, synth.num_inference_steps

    def slices(stack: torch.Tensor) -> torch.Tensor:  # (N, 1, H, W) axial slices, 16 per call as inference.json
        with torch.inference_mode():
            return torch.cat([synth(stack[i : i + 16]) for i in range(0, len(stack), 16)])

    def slices_own_noise(stack: torch.Tensor) -> torch.Tensor:  # each slice sampled with seed = its index
        out = []
        try:
            for i in range(len(stack)):
                synth.seed = i
                with torch.inference_mode():
                    out.append(synth(stack[i : i + 1]))
        finally:
            synth.seed = seed
        return torch.cat(out)

    def slices_one_step(stack: torch.Tensor) -> torch.Tensor:
        try:
            synth.set_num_inference_steps(1)
            return slices(stack)
        finally:
            synth.set_num_inference_steps(steps)

    def volume(stack: torch.Tensor) -> torch.Tensor:  # (N, 1, H, W) -> (1, 1, H, W, N)
        return stack.permute(1, 2, 3, 0)[None]

    rows = []
    for s in bq.load_test_set(cfg, data, 0):
        src, tgt, mask = volume(s["source"]), volume(s["target"]), volume(s["mask"])
        row, preds = {"subject": Path(s["name"]).parent.name, "shape": list(src.shape[2:])}, {}
        start = time.perf_counter()
        preds["native_1mm"] = volume(slices(s["source"]))
        row["native_1mm_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        low = F.interpolate(src, scale_factor=0.5, mode="trilinear", align_corners=False)
        preds["via_2mm"] = F.interpolate(
            volume(slices(low[0].permute(3, 0, 1, 2))), size=src.shape[2:], mode="trilinear", align_corners=False
        )
        row["via_2mm_seconds"] = time.perf_counter() - start
        # in-plane only: each source slice at 2 mm, no through-plane resampling
        low = F.interpolate(src, scale_factor=(0.5, 0.5, 1.0), mode="trilinear", align_corners=False)
        for name, sample in (
            ("via_2mm_in_plane", slices),
            ("via_2mm_in_plane_own_noise", slices_own_noise),
            ("via_2mm_in_plane_one_step", slices_one_step),
        ):
            start = time.perf_counter()
            preds[name] = F.interpolate(
                volume(sample(low[0].permute(3, 0, 1, 2))), size=src.shape[2:], mode="trilinear", align_corners=False
            )
            row[f"{name}_seconds"] = time.perf_counter() - start
        for name, pred in preds.items():
            pred = pred.clamp(-1, 1)
            row[f"{name}_psnr_brain"] = masked_psnr(pred, tgt, mask)
            row[f"{name}_through_plane_ratio"] = through_plane_ratio(pred, tgt, 2, mask)
            row[f"{name}_blockiness"] = blockiness(pred, tgt, bc.finest_token_stride(), mask)
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).write_text(
        json.dumps({"num_inference_steps": synth.num_inference_steps, "subjects": rows}, indent=2)
    )


if __name__ == "__main__":
    main()

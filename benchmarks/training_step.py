"""Training-step and sampling timings of PHMDiff (arXiv 2507.16579) on the default preset and demo size.

Measures one optimiser step (forward + backward + Adam) of the same denoiser
  * at mask ratio 0.5 vs 0 (MaskDiT reports about 2x; goal >= 1.8x), and
  * on the three-level pyramid vs a single full-resolution level (token arithmetic 1 + 1/4 + 1/16 = 1.31x;
    goal <= 1.5x),
and optionally the sampling time of the synthesiser. Writes ``benchmarks/results/training_step.json``.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/training_step.py                       # batch 8 of 99x117 slices, preset S
    OMP_NUM_THREADS=2 python benchmarks/training_step.py --sampling            # + sampling 1x99x117, 32x208x240
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import PHMDiffStep, round_robin

from custom.networks.nets import PHMDiffSynthesizer


def time_training_steps(
    cases: dict[str, tuple[int, float]], preset: str, batch: int, size: list[int], repeats: int, warmup: int
) -> dict[str, float]:
    """Median step time per case (the network's class defaults: patch 4, AdamW at 1e-4), cases interleaved."""
    setups = {}
    for name, (levels, ratio) in cases.items():
        torch.manual_seed(0)
        synth = PHMDiffSynthesizer(spatial_dims=len(size), num_levels=levels, preset=preset)
        setups[name] = PHMDiffStep(synth, inferer_overrides={"mask_ratio": ratio}, batch=batch, size=size, lr=1e-4)
    return round_robin(setups, warmup=warmup, repeats=repeats)


def time_sampling(preset: str, batch: int, size: list[int], steps: int | None) -> float:
    kwargs = {} if steps is None else {"num_inference_steps": steps}
    synth = PHMDiffSynthesizer(spatial_dims=len(size), preset=preset, **kwargs).eval()
    source = torch.rand(batch, 1, *size) * 2 - 1
    with torch.inference_mode():
        synth(source[:1, :, : size[0] // 2, : size[1] // 2])  # warm-up
        start = time.perf_counter()
        synth(source)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="S")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, nargs="+", default=[99, 117])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sampling", action="store_true", help="also time sampling (slow on a CPU)")
    parser.add_argument("--sampling-steps", type=int, default=None, help="DDIM steps (default: the network's)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "training_step.json"))
    args = parser.parse_args()

    cases = {
        "3 levels, r=0.5": (3, 0.5),
        "3 levels, r=0": (3, 0.0),
        "1 level, r=0.5": (1, 0.5),
        "1 level, r=0": (1, 0.0),
    }
    step = time_training_steps(cases, args.preset, args.batch, args.size, args.repeats, args.warmup)
    results: dict = {
        "command": " ".join(["python"] + sys.argv),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "preset": args.preset,
        "batch": args.batch,
        "size": args.size,
        "training_step_s": step,
        "speedup_mask_0.5_vs_0 (3 levels)": step["3 levels, r=0"] / step["3 levels, r=0.5"],
        "speedup_mask_0.5_vs_0 (1 level)": step["1 level, r=0"] / step["1 level, r=0.5"],
        "pyramid_vs_single_level (r=0.5)": step["3 levels, r=0.5"] / step["1 level, r=0.5"],
        "pyramid_vs_single_level (r=0)": step["3 levels, r=0"] / step["1 level, r=0"],
    }
    if args.sampling:
        results["sampling_s"] = {
            "1x99x117": time_sampling(args.preset, 1, [99, 117], args.sampling_steps),
            "32x208x240": time_sampling(args.preset, 32, [208, 240], args.sampling_steps),
        }
        results["sampling_steps"] = args.sampling_steps or PHMDiffSynthesizer().num_inference_steps

    threads = torch.get_num_threads()
    print(f"PHMDiff training step, preset {args.preset}, batch {args.batch} x {args.size}, {threads} threads")
    print(f"{'case':<20}{'step (s)':>10}")
    for name, seconds in step.items():
        print(f"{name:<20}{seconds:>10.3f}")
    for key in [k for k in results if k.startswith(("speedup", "pyramid"))]:
        print(f"{key:<40}{results[key]:>8.2f}x")
    for name, seconds in results.get("sampling_s", {}).items():
        print(f"sampling {name:<14}{seconds:>10.2f} s ({results['sampling_steps']} DDIM steps per level)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Speed, FLOPs, memory and profile parts of ``benchmarks/run.py``; each part runs in its own process.

Usage (normally through run.py)::

    python benchmarks/bench_speed.py PART [--quick] --out FILE.json

PART is one of ``train`` (step times, FLOPs, GEMM peak, profile), ``sample`` (per-slice sampling vs DDPM),
``volume_bundle`` (a 197x233x189 1 mm volume through inference.json: resampling to ``spacing``, synthesis,
inversion, writing), ``volume_native`` (the same volume slice-wise at 1 mm, timed on a subset of slice batches and
extrapolated), ``rss_train`` (peak RSS of the bundle's training step).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc

MNI_SHAPE = (197, 233, 189)  # MNI ICBM152 1 mm grid
MNI_ORIGIN = (-98.0, -134.0, -72.0)


# ---------------------------------------------------------------------------------------------------------------
# Peak, FLOPs, profile
# ---------------------------------------------------------------------------------------------------------------


def gemm_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of a large square ``torch.matmul`` on this machine (all threads torch uses)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        torch.matmul(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def step_flops(setup) -> float:
    """FLOPs of one forward + backward (what FlopCounterMode counts: matmuls, convs, attention)."""
    with FlopCounterMode(display=False) as counter:
        loss = setup.loss(setup.source, setup.target)
        loss.backward()
    setup.opt.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def hourglass_share(**network) -> dict:
    """Share of the convolutional hourglass (stem, encoder, decoder, head) of the bundle's denoiser, with ``network``
    overriding its arguments, in its parameters and in the FLOPs of one unmasked forward pass at 99x117
    (FlopCounterMode's per-module counts)."""
    den = bc.make_phmdiff(**network).denoiser
    parts = ("stem", "encoder", "decoder", "head")
    with FlopCounterMode(den, display=False) as counter:
        den(torch.rand(1, 3, *bc.DEMO_SIZE), torch.tensor([500]), 0, 0.0)
    counts = counter.get_flop_counts()
    # a ModuleList has no entry of its own: count its children, one name level below it
    conv = sum(sum(v.values()) for k, v in counts.items() if k.count(".") == 2 and k.split(".")[1] in parts)
    params = sum(q.numel() for p in parts for q in getattr(den, p).parameters())
    return {
        "flops_fraction": conv / counter.get_total_flops(),
        "params_fraction": params / sum(q.numel() for q in den.parameters()),
    }


def profile_step(fn, top: int = 12) -> dict:
    """Self CPU time per operator of one call of ``fn`` (torch.profiler), grouped and top-``top``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    groups = {
        "gemm (mm/addmm/bmm/linear)": ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"),
        "attention (sdpa)": ("aten::_scaled_dot_product", "aten::scaled_dot_product"),
        "convolution": (
            "aten::convolution",
            "aten::_convolution",
            "aten::mkldnn_convolution",
            "aten::conv",
            "aten::convolution_backward",
            "aten::_slow_conv2d",
            "aten::thnn_conv",
        ),
        "normalisation": ("aten::native_layer_norm", "aten::native_group_norm", "aten::layer_norm", "aten::group_norm"),
        "copies/reshapes (copy_, cat, index, gather, scatter, pad)": (
            "aten::copy_",
            "aten::cat",
            "aten::index",
            "aten::gather",
            "aten::scatter",
            "aten::clone",
            "aten::replication_pad",
            "aten::constant_pad",
            "aten::reflection_pad",
            "aten::repeat_interleave",
            "aten::contiguous",
            "aten::_to_copy",
            "aten::index_select",
            "aten::take_along_dim",
        ),
    }
    shares = {name: 0.0 for name in groups}
    shares["other (elementwise, optimiser, ...)"] = 0.0
    for e in events:
        for name, prefixes in groups.items():
            if e.key.startswith(prefixes):
                shares[name] += e.self_cpu_time_total
                break
        else:
            shares["other (elementwise, optimiser, ...)"] += e.self_cpu_time_total
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {
        "total_self_cpu_s": total / 1e6,
        "share_by_group": {k: round(v / total, 4) for k, v in shares.items()},
        "top_ops": [
            {
                "op": e.key,
                "self_cpu_s": round(e.self_cpu_time_total / 1e6, 4),
                "share": round(e.self_cpu_time_total / total, 4),
                "calls": e.count,
            }
            for e in ranked
        ],
    }


def part_train(quick: bool) -> dict:
    torch.manual_seed(0)
    peak = gemm_peak_gflops(repeats=3 if quick else 7)
    base = bc.make_phmdiff()
    nomask = bc.make_phmdiff()
    nomask.load_state_dict(base.state_dict())  # the same network for both ratios
    setups = {
        "phmdiff_r0.5": bc.PHMDiffStep(base, inferer_overrides={"mask_ratio": 0.5}),
        "phmdiff_r0": bc.PHMDiffStep(nomask, inferer_overrides={"mask_ratio": 0.0}),
        "ddpm_unet": bc.DDPMUNetStep(),
    }
    step = bc.round_robin(setups, warmup=1, repeats=3 if quick else 7)
    peak_after = gemm_peak_gflops(repeats=3 if quick else 7)
    flops = {name: step_flops(s) for name, s in setups.items()}
    gflops_per_s = {name: flops[name] / step[name] / 1e9 for name in setups}
    # token-level GEMM efficiency: the blocks' matmuls alone, at the training shapes (B*K tokens x D)
    prof = profile_step(setups["phmdiff_r0.5"].step)
    prof_nomask = profile_step(setups["phmdiff_r0"].step, top=6)
    prof_ddpm = None if quick else profile_step(setups["ddpm_unet"].step, top=6)
    return {
        "threads": torch.get_num_threads(),
        "gemm_peak_gflops": max(peak, peak_after),
        "gemm_peak_gflops_before_after": [peak, peak_after],
        "step_s": step,
        "images_per_s": {k: bc.BATCH / v for k, v in step.items()},
        "flops_per_step": flops,
        "gflops_per_s": gflops_per_s,
        "params": {k: bc.num_params(s.model) for k, s in setups.items()},
        "profile_phmdiff_r0.5_step": prof,
        "profile_phmdiff_r0_step": prof_nomask,
        "profile_ddpm_unet_step": prof_ddpm,
        "gemm_shapes_note": "PHMDiff S: D=96 tokens; its block GEMMs are (B*K x 96) @ (96 x 288/384/576) -- "
        "thin matrices far from the 2048^2 peak shape",
        "load_average": bc.load_average(),
    }


# ---------------------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------------------


def _timed(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def part_sample(quick: bool) -> dict:
    torch.manual_seed(0)
    synth = bc.make_phmdiff().eval()
    size = [256, 256]
    source = torch.rand(1, 1, *size) * 2 - 1
    with torch.inference_mode():
        synth(source[:, :, :64, :64])  # warm-up
        ours = _timed(lambda: synth(source), 1 if quick else 3)
        prof = profile_step(lambda: synth(source), top=8) if not quick else None
    unet = bc.DDPMUNetStep(batch=1, size=size).model.eval()
    x = torch.cat([source, source], 1)  # (1, 2, 256, 256): 256 is a multiple of 4
    measured = 3 if quick else 10
    with torch.inference_mode():
        unet(x, torch.tensor([999]))  # warm-up
        start = time.perf_counter()
        for i in range(measured):
            unet(x, torch.tensor([999 - i]))
        per_step = (time.perf_counter() - start) / measured
    out = {
        "size": size,
        "phmdiff_steps_per_level": synth.num_inference_steps,
        "phmdiff_levels": synth.num_levels,
        "phmdiff_seconds_per_slice": ours,
        "ddpm_unet_seconds_per_step": per_step,
        "ddpm_unet_measured_steps": measured,
        "ddpm_unet_1000_steps_seconds_per_slice": per_step * 1000,
        "ddpm_unet_ddim20_seconds_per_slice": per_step * 20,
        "load_average": bc.load_average(),
    }
    if prof is not None:
        out["profile_phmdiff_sample_256"] = prof
    return out


def _write_mni_volume(path: Path) -> Path:
    """A 197x233x189 1 mm T1w-like volume: a demo test subject (2 mm) interpolated onto the MNI 1 mm grid."""
    import nibabel as nib

    from custom.data import load_datalist

    datalist = _demo_datalist()
    entry = load_datalist(datalist, "test", required_keys=("image",))[0]
    img = nib.load(entry["image"])
    data = torch.as_tensor(np.asarray(img.dataobj, dtype=np.float32))[None, None]
    data = torch.nn.functional.interpolate(data, size=MNI_SHAPE, mode="trilinear", align_corners=True)[0, 0]
    affine = np.eye(4)
    affine[:3, 3] = MNI_ORIGIN
    nib.save(nib.Nifti1Image(data.numpy(), affine), str(path))
    return path


def _demo_datalist() -> Path:
    demo = bc.ROOT / "bundle" / "data" / "demo_t1w_t2w" / "datalist.json"
    if demo.is_file():
        return demo
    from custom.data import generate_demo_dataset

    return generate_demo_dataset(Path(tempfile.gettempdir()) / "phmdiff_bench_demo", "t1w", "t2w")


def _checkpoint(tmp: Path, shipped: str | None) -> tuple[Path, str]:
    if shipped and Path(shipped).is_file():
        return Path(shipped), shipped
    path = tmp / "random_init.pt"
    torch.save(bc.make_phmdiff().state_dict(), path)
    return path, "random initialisation (timing does not depend on the weights)"


class _ForwardClock:
    """Accumulates the wall time spent inside ``module.forward`` (hooks), to split synthesis from I/O."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seconds, self.calls, self._start = 0.0, 0, 0.0
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _pre(self, *_):
        self._start = time.perf_counter()

    def _post(self, *_):
        self.seconds += time.perf_counter() - self._start
        self.calls += 1


def part_volume_bundle(quick: bool, shipped: str | None) -> dict:
    """One MNI-sized 1 mm volume through inference.json unchanged except paths: resample to ``spacing`` (2 mm in-plane),
    slice-wise synthesis in batches of ``slice_batch_size``, inversion back to 1 mm, NIfTI writing."""
    tmp = Path(tempfile.mkdtemp(prefix="phmdiff_bench_vol_"))
    volume = _write_mni_volume(tmp / "mni_t1w.nii.gz")
    ckpt, ckpt_note = _checkpoint(tmp, shipped)
    parser = bc.bundle_parser(
        bc.INFER_CONFIG, dataset_dir=str(volume), output_dir=str(tmp / "out"), ckpt_path=str(ckpt)
    )
    parser["inferer"]["progress"] = False
    parser.parse()
    parser.get_parsed_content("initialize")  # set_determinism(seed)
    evaluator = parser.get_parsed_content("evaluator")
    network = parser.get_parsed_content("network")
    clock = _ForwardClock(network)
    start = time.perf_counter()
    evaluator.run()
    total = time.perf_counter() - start
    written = sorted(str(p) for p in tmp.rglob("*_synth.nii*"))
    import nibabel as nib

    shape_out = list(nib.load(written[0]).shape) if written else None
    return {
        "what": "inference.json pipeline: load 1 mm -> resample to spacing -> slice-wise synthesis -> invert to 1 mm"
        " -> write",
        "input_shape": list(MNI_SHAPE),
        "output_shape": shape_out,
        "spacing_mm": parser["spacing"],
        "slice_batch_size": parser["slice_batch_size"],
        "num_inference_steps": parser["num_inference_steps"],
        "checkpoint": ckpt_note,
        "seconds_total": total,
        "seconds_in_network": clock.seconds,
        "network_calls": clock.calls,
        "peak_rss_mb": bc.peak_rss_mb(),
        "load_average": bc.load_average(),
    }


def part_volume_native(quick: bool) -> dict:
    """1 mm slice-wise synthesis (no resampling): axial 197x233 slices in batches of the bundle's
    slice_batch_size, timed on ``n`` batches and extrapolated to the 189 slices."""
    synth = bc.make_phmdiff().eval()
    batch = int(bc.bundle_parser(bc.INFER_CONFIG)["slice_batch_size"])
    measured_slices = 4 if quick else batch
    source = torch.rand(measured_slices, 1, *MNI_SHAPE[:2]) * 2 - 1
    with torch.inference_mode():
        synth(source[:1, :, :64, :64])
        start = time.perf_counter()
        synth(source)
        seconds = time.perf_counter() - start
    per_slice = seconds / measured_slices
    return {
        "what": "native 1 mm, slice-wise (no resampling), extrapolated linearly from one measured batch",
        "slice_shape": list(MNI_SHAPE[:2]),
        "num_slices": MNI_SHAPE[2],
        "measured_slices_in_one_batch": measured_slices,
        "seconds_measured": seconds,
        "seconds_per_slice": per_slice,
        "seconds_per_volume_extrapolated": per_slice * MNI_SHAPE[2],
        "peak_rss_mb_batch": bc.peak_rss_mb(),
        "load_average": bc.load_average(),
    }


def part_rss_train(quick: bool) -> dict:
    """Peak RSS of the bundle's training step (batch 8 of 99x117 slices), in a process of its own."""
    torch.manual_seed(0)
    setup = bc.PHMDiffStep(bc.make_phmdiff(), inferer_overrides={"mask_ratio": 0.5})
    before = bc.peak_rss_mb()
    times = [setup.step() for _ in range(3)]
    return {"peak_rss_mb": bc.peak_rss_mb(), "rss_mb_before_training": before, "step_s": times}


def part_whatif(quick: bool) -> dict:
    """Why the masking and GEMM-efficiency goals are (not) reached: the masking speed-up of other mask ratios,
    decoder depths and of the pixel-unshuffle hourglass (measured, with its FLOP ratio), and the GEMM throughput at
    the shapes the S preset runs."""
    torch.manual_seed(0)
    depth = len(bc.make_phmdiff().denoiser.blocks)
    variants = {  # name: (mask ratio, network overrides, decoder_depth always given)
        "r0.5_dec1 (bundle)": (0.5, {"decoder_depth": 1}),
        "r0.75_dec1": (0.75, {"decoder_depth": 1}),
        "r0.5_dec2": (0.5, {"decoder_depth": 2}),
        "r0.5_dec0": (0.5, {"decoder_depth": 0}),
        "r0.5_dec1_pixel_unshuffle": (0.5, {"decoder_depth": 1, **bc.PIXEL_UNSHUFFLE}),
    }
    setups, unmasked = {}, {}  # unmasked: one r=0 setup per distinct network, named after its first variant
    for name, (ratio, network) in variants.items():
        base = bc.make_phmdiff(**network)
        setups[f"{name} masked"] = bc.PHMDiffStep(base, inferer_overrides={"mask_ratio": ratio})
        key = json.dumps(network, sort_keys=True)
        if key not in unmasked:
            unmasked[key] = f"{name} r=0"
            full = bc.make_phmdiff(**network)
            full.load_state_dict(base.state_dict())
            setups[unmasked[key]] = bc.PHMDiffStep(full, inferer_overrides={"mask_ratio": 0.0})
    step = bc.round_robin(setups, warmup=1, repeats=3 if quick else 7)
    flops = {k: step_flops(s) for k, s in setups.items()}
    masking = {}
    for name, (ratio, network) in variants.items():
        nomask = unmasked[json.dumps(network, sort_keys=True)]
        dec = network["decoder_depth"]
        masking[name] = {
            "speedup_measured": step[nomask] / step[f"{name} masked"],
            "flop_ratio": flops[nomask] / flops[f"{name} masked"],
            "block_bound_(depth+dec)/(depth*(1-r)+dec)": (depth + dec) / (depth * (1 - ratio) + dec),
            "step_s": step[f"{name} masked"],
        }
    gemm = {}
    den = bc.make_phmdiff().denoiser
    d, hidden = den.hidden_size, int(den.blocks[0].mlp.linear1.out_features)
    grid = [-(-s // den.token_stride(0)) for s in bc.DEMO_SIZE]
    tokens = bc.BATCH * (grid[0] * grid[1] // 2)  # B x kept tokens of the finest level at r = 0.5
    for label, (m, k, n) in {
        f"qkv (B*K x {d} x {3 * d})": (tokens, d, 3 * d),
        f"mlp up (B*K x {d} x {hidden})": (tokens, d, hidden),
        f"mlp down (B*K x {hidden} x {d})": (tokens, hidden, d),
        "2048^2": (2048, 2048, 2048),
    }.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        reps = max(3, int(2e9 / (2 * m * k * n)))
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        gemm[label] = 2 * m * k * n * reps / (time.perf_counter() - start) / 1e9
    return {
        "masking": masking,
        "gemm_gflops_at_model_shapes": gemm,
        "hourglass_share": hourglass_share(),
        "hourglass_share_pixel_unshuffle": hourglass_share(**bc.PIXEL_UNSHUFFLE),
        "load_average": bc.load_average(),
    }


def part_policy_probe(quick: bool) -> dict:
    """One sampling call (4 slices of 99x117) under this process's OpenMP settings: on a shared machine the
    default spinning OpenMP wait policy with all cores' threads can be an order of magnitude slower."""
    import os

    synth = bc.make_phmdiff().eval()
    source = torch.rand(4, 1, *bc.DEMO_SIZE) * 2 - 1
    with torch.inference_mode():
        synth(source[:1])
        start = time.perf_counter()
        synth(source)
        seconds = time.perf_counter() - start
    return {
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "seconds_4_slices_99x117": seconds,
        "load_average": bc.load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "part", choices=["train", "sample", "volume_bundle", "volume_native", "rss_train", "policy_probe", "whatif"]
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--shipped", default=None, help="checkpoint for volume_bundle (else random init)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    start = time.perf_counter()
    if args.part == "train":
        result = part_train(args.quick)
    elif args.part == "sample":
        result = part_sample(args.quick)
    elif args.part == "volume_bundle":
        result = part_volume_bundle(args.quick, args.shipped)
    elif args.part == "volume_native":
        result = part_volume_native(args.quick)
    elif args.part == "whatif":
        result = part_whatif(args.quick)
    elif args.part == "policy_probe":
        result = part_policy_probe(args.quick)
    else:
        result = part_rss_train(args.quick)
    result["part_seconds"] = time.perf_counter() - start
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

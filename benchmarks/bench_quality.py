"""Quality part of ``benchmarks/run.py``: every learned row trained for the same wall-clock budget on the bundle's
training slices, then scored on the held-out demo test subjects against the baselines.

Usage (normally through run.py)::

    python benchmarks/bench_quality.py --budget 25 --eval-slices 4 --out FILE.json

Protocol
  * data: the bundle's train.json pipeline unchanged (CacheDataset + load transforms + RandForegroundSlicesd,
    flips, affine, intensity scaling; batches of volumes_per_batch x slices_per_volume = 8 slices of 99x117);
    every row starts from the same seed, so it sees the same batch sequence;
  * training: AdamW; the rows built from the bundle (PHMDiff and its ablations, the single-level DiT) at the
    bundle's learning_rate with its warm-up/cosine schedule laid over the wall-clock budget instead of an epoch
    count, the baselines (UNet-L1, DDPM UNet) at their own constant rate (a warm-up/cosine schedule left the
    UNet's background unlearnt after 300 s: whole-image PSNR 15.5 instead of 21.5 dB); no EMA (at decay 0.999 a
    short run's EMA is still the initialisation); the clock counts data loading + optimiser steps and stops at the
    first step that reaches the budget; evaluations for the learning curve pause it;
  * test: the demo test split (generate_demo_dataset, seed 0), intensities normalised as the bundle does
    (ModalityNormalized: 0.5/99.5 percentiles -> [-1, 1]); axial slices (slice_axis 2); metrics in that
    normalised space with data range 2 (as the bundle's validation): PSNR, SSIM (2-D, Gaussian 11/1.5, per
    slice), MAE, over all voxels of the evaluated slices ("whole") and inside the brain mask ("brain");
    mean and std over subjects.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd
from monai.utils import set_determinism

from custom.data import load_datalist, pointwise_remap
from custom.metrics import (
    blockiness,
    lesion_contrast,
    masked_psnr,
    masked_ssim,
    through_plane_ratio,
)
from custom.transforms import ForegroundSlicesd

# The plain DiT of bundle 0.1.x (D=96, 6 + 2 blocks, 8x8 finest patches, linear unpatchify), fixed here so that the
# baseline keeps its configuration whatever the bundle's defaults become.
PLAIN_DIT = {
    "preset": "S",
    "hidden_size": 96,
    "depth": 6,
    "num_heads": 4,
    "decoder_depth": 2,
    "conv_channels": [],
    "patch_size": [8, 4, 2],
}
PHMDIFF_ROWS = {
    # name: overrides of train.json's network_def ("network"), train#inferer ("inferer") and loss ("loss")
    "phmdiff": {},
    "phmdiff_no_mmd": {"loss": {"mmd_weight": 0.0}},
    "phmdiff_no_masking": {"inferer": {"mask_ratio": 0.0}},
    "phmdiff_one_level": {"network": {"num_levels": 1}},
    "phmdiff_no_hourglass": {"network": PLAIN_DIT},
    "phmdiff_no_transformer": {"network": {"depth": 0, "decoder_depth": 0}},
    "phmdiff_uniform_t": {"inferer": {"timestep_power": 1.0}},
    "phmdiff_channel_norm": {"network": {"hourglass_norm": "channel"}},
    "phmdiff_crop64": {"network": {"hourglass_norm": "channel"}, "inferer": {"crop_size": 64}},  # 64x64 finest windows
    # the hourglass at half resolution: a 2x pixel-unshuffle stem and a pixel-shuffle head
    "phmdiff_pixel_unshuffle": {"network": dict(bc.PIXEL_UNSHUFFLE)},
    "phmdiff_pixel_unshuffle_crop64": {
        "network": {**bc.PIXEL_UNSHUFFLE, "hourglass_norm": "channel"},
        "inferer": {"crop_size": 64},
    },
    "dit_single_level": {
        "network": {**PLAIN_DIT, "num_levels": 1, "patch_size": [8]},
        "inferer": {"mask_ratio": 0.0, "timestep_power": 1.0, "crop_size": None},
        "loss": {"mmd_weight": 0.0},
    },
}
LEARNED_ROWS = list(PHMDIFF_ROWS) + ["unet_l1", "ddpm_unet"]
# More capacity on the pixel-unshuffle crop row, run on request (--rows), not by default: a transformer twice as deep,
# patch 1 at the finest level (token stride 4, four times the tokens), a wider hourglass, a 32/64 hourglass with patch
# 1. Blockiness is scored on the bundle's 8-pixel token grid, not on the 4-pixel grid of the patch-1 rows.
CAPACITY_BASE = "phmdiff_pixel_unshuffle_crop64"
CAPACITY_ROWS = {
    f"{CAPACITY_BASE}_{name}": {
        **PHMDIFF_ROWS[CAPACITY_BASE],
        "network": {**PHMDIFF_ROWS[CAPACITY_BASE]["network"], **network},
    }
    for name, network in (
        ("depth12", {"depth": 12}),
        ("fine_grid", {"patch_size": [1, 2, 2]}),
        ("hourglass24", {"conv_channels": [24, 48]}),
        ("hourglass32_fine_grid", {"conv_channels": [32, 64], "patch_size": [1, 2, 2]}),
    )
}
PHMDIFF_ROWS.update(CAPACITY_ROWS)
SAMPLE_STEPS = 10  # the table's single sample: 10 DDIM steps per level, whatever the bundle's default
SWEEP_STEPS = (10, 5, 3, 2, 1)  # DDIM steps per level tried on the shipped weights


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------


def metrics(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, lesion: torch.Tensor | None = None
) -> dict[str, float]:
    """PSNR/SSIM/MAE of one subject's evaluated slices (N, 1, H, W), whole and inside ``mask``; blockiness on the
    bundle's finest token grid inside ``mask``; with a ``lesion`` mask, PSNR in lesions and each lesion's contrast
    ratio (``lesion_ratios``, a list, pooled over subjects by :func:`summarise`)."""
    out: dict = {"blockiness": blockiness(pred.float().clamp(-1, 1), target.float(), bc.finest_token_stride(), mask)}
    if lesion is not None and bool((lesion > 0).any()):
        out["psnr_lesion"] = masked_psnr(pred.clamp(-1, 1), target, lesion)
        out["lesion_ratios"] = lesion_contrast(pred.clamp(-1, 1), target, lesion, tissue=mask)
    pred = pred.clamp(-1, 1)
    err = pred.double() - target.double()
    for name, region in (("whole", None), ("brain", mask)):
        out[f"psnr_{name}"] = masked_psnr(pred, target, region)
        out[f"ssim_{name}"] = masked_ssim(pred, target, region)
        out[f"mae_{name}"] = float((err if region is None else err[region > 0]).abs().mean())
    return out


def summarise(per_subject: list[dict]) -> dict[str, float]:
    """Mean and std over subjects of each figure; lesion contrast ratios are pooled over all test lesions."""
    out: dict = {}
    for k in dict.fromkeys(k for s in per_subject for k in s):
        if k == "lesion_ratios":
            ratios = np.array([r for s in per_subject for r in s.get(k, [])])
            out["lesion_contrast"] = float(ratios.mean()) if len(ratios) else None
            out["lesion_contrast_std"] = float(ratios.std(ddof=1)) if len(ratios) > 1 else 0.0
            out["lesions_scored"] = int(len(ratios))
            continue
        values = np.array([s[k] for s in per_subject if k in s])
        out[k] = float(values.mean())
        out[f"{k}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def demo_dataset_dir() -> Path:
    path = bc.ROOT / "bundle" / "data" / "demo_t1w_t2w"
    if (path / "datalist.json").is_file():
        return path
    from custom.data import generate_demo_dataset

    return generate_demo_dataset(Path("/tmp/phmdiff_bench_demo"), "t1w", "t2w").parent


def load_test_set(parser, dataset_dir: Path, eval_slices: int) -> list[dict]:
    """Test subjects as normalised axial slice stacks (N, 1, H, W) plus brain masks, with the slice indices."""
    load = Compose(parser.get_parsed_content("load_transforms"))
    mask_keys = ["mask", "lesion"]
    load_mask = Compose(
        [
            LoadImaged(mask_keys, allow_missing_keys=True),
            EnsureChannelFirstd(mask_keys, allow_missing_keys=True),
            Orientationd(mask_keys, axcodes="RAS", allow_missing_keys=True),
        ]
    )
    axis = int(parser["slice_axis"])
    subjects = []
    for entry in load_datalist(dataset_dir / "datalist.json", "test", required_keys=("image", "label", "mask")):
        d = load({"image": entry["image"], "label": entry["label"]})
        masks = load_mask({k: entry[k] for k in mask_keys if k in entry})
        m = masks["mask"]
        if eval_slices > 0:  # the bundle's validation choice: evenly spaced over the foreground slices, edges skipped
            picked = ForegroundSlicesd(keys="image", num_slices=eval_slices, spatial_axis=axis)({"image": d["image"]})
            index = np.array([p["slice_index"] for p in picked])
        else:
            index = np.arange(d["image"].shape[axis + 1])

        def stack(v):
            v = torch.as_tensor(v.as_tensor() if hasattr(v, "as_tensor") else v).float()
            return v.movedim(axis + 1, 0)[torch.as_tensor(index)]  # (N, 1, H, W)

        subjects.append(
            {
                "name": entry["image"],
                "source": stack(d["image"]),
                "target": stack(d["label"]),
                "mask": stack(m),
                "slices": index.tolist(),
                **({"lesion": stack(masks["lesion"])} if "lesion" in masks else {}),
            }
        )
    return subjects


def predict_all(
    model, subjects: list[dict], seed: int = 0, chunk: int = 16, limit: int | None = None, **options
) -> list[torch.Tensor]:
    out = []
    for s in subjects:
        src = s["source"][:limit] if limit else s["source"]
        out.append(
            torch.cat([model.predict(src[i : i + chunk], seed=seed, **options) for i in range(0, len(src), chunk)])
        )
    return out


def sampling_modes(step, subjects: list[dict], preds: list[torch.Tensor], mean_seeds: int) -> dict:
    """The perception/distortion trade-off of a diffusion row: one-step x₀ and the mean of ``mean_seeds`` samples
    (``preds`` is the seed-0 sample); the DDPM baseline gets one-step only (its sampling costs minutes)."""
    out = {"one_step_x0": score(predict_all(step, subjects, one_step=True), subjects)}
    bundle_steps = int(bc.bundle_parser(bc.INFER_CONFIG)["num_inference_steps"])
    if isinstance(step, bc.PHMDiffStep) and bundle_steps not in (1, step.synth.num_inference_steps):
        out["bundle_steps"] = {
            "num_inference_steps": bundle_steps,
            **score(predict_all(step, subjects, steps=bundle_steps), subjects),
        }
    if mean_seeds > 1 and isinstance(step, bc.PHMDiffStep):
        samples = [preds] + [predict_all(step, subjects, seed=s) for s in range(1, mean_seeds)]
        out["posterior_mean"] = {
            "seeds": list(range(mean_seeds)),
            **score([torch.stack(p).mean(0) for p in zip(*samples)], subjects),
        }
        spread = [float(torch.stack(p).std(0).mean()) for p in zip(*samples)]
        out["posterior_mean"]["mean_sample_std"] = float(np.mean(spread))
    return out


def score(preds: list[torch.Tensor], subjects: list[dict], limit: int | None = None) -> dict:
    per = []
    for p, s in zip(preds, subjects):
        n = len(p[:limit] if limit else p)
        lesion = s["lesion"][:n] if "lesion" in s else None
        per.append(metrics(p[:n], s["target"][:n], s["mask"][:n], lesion))
        if n > 2 and np.all(np.diff(s["slices"][:n]) == 1):  # whole volumes (--eval-slices 0): neighbours exist
            volume = [v[:n].clamp(-1, 1).permute(1, 2, 3, 0)[None] for v in (p, s["target"], s["mask"])]  # (1,1,H,W,N)
            per[-1]["through_plane_ratio"] = through_plane_ratio(volume[0], volume[1], slice_axis=2, mask=volume[2])
    return summarise(per)


# ---------------------------------------------------------------------------------------------------------------
# Baselines without training on the test subject
# ---------------------------------------------------------------------------------------------------------------


def linear_remap(train_items: list[dict], subjects: list[dict]) -> tuple[dict, dict]:
    """Least-squares target = a * source + b on every voxel of the training volumes (normalised as the bundle)."""
    sxx = sx = sxy = sy = n = 0.0
    for d in train_items:
        x, y = torch.as_tensor(d["image"]).double().flatten(), torch.as_tensor(d["label"]).double().flatten()
        sxx += float((x * x).sum())
        sx += float(x.sum())
        sxy += float((x * y).sum())
        sy += float(y.sum())
        n += x.numel()
    a = (n * sxy - sx * sy) / (n * sxx - sx * sx)
    b = (sy - a * sx) / n
    preds = [(a * s["source"] + b).clamp(-1, 1) for s in subjects]
    return score(preds, subjects), {"a": a, "b": b, "voxels": n, "volumes": len(train_items)}


def training_volumes(parser, dataset_dir: Path) -> list[dict]:
    """The training volumes after the bundle's load transforms (what CacheDataset caches)."""
    load = Compose(parser.get_parsed_content("load_transforms"))
    entries = load_datalist(dataset_dir / "datalist.json", "training", required_keys=("image", "label"))
    return [load({"image": e["image"], "label": e["label"]}) for e in entries]


def oracle_remap(subjects: list[dict], bins: int = 256) -> dict:
    """Best pointwise intensity mapping fitted on each test subject itself (:func:`custom.data.pointwise_remap`:
    conditional mean of the target per source bin; fitted on all evaluated voxels for "whole", on brain voxels for
    "brain")."""
    per = []
    for s in subjects:
        result = {}
        for name, fit in (("whole", None), ("brain", s["mask"])):
            mapping = torch.from_numpy(pointwise_remap(s["source"], s["target"], fit, bins)).float()
            m = metrics(mapping, s["target"], s["mask"], s.get("lesion"))
            result.update({k: v for k, v in m.items() if k.endswith(name) or (name == "brain" and "_" not in k)})
            if name == "brain":
                result.update({k: v for k, v in m.items() if "lesion" in k})
        per.append(result)
    return summarise(per)


# ---------------------------------------------------------------------------------------------------------------
# Learned rows
# ---------------------------------------------------------------------------------------------------------------


def build_row(name: str, ddim_steps: int):
    if name in PHMDIFF_ROWS:
        overrides = PHMDIFF_ROWS[name]
        network = overrides.get("network", {})
        step = bc.PHMDiffStep(
            bc.make_phmdiff(**{"num_inference_steps": SAMPLE_STEPS, **network}),
            inferer_overrides=overrides.get("inferer"),
            loss_overrides=overrides.get("loss"),
        )
        return step, {
            "network": {**bc.bundle_network_config(), **network},
            "mask_ratio": step.inferer.mask_ratio,
            "timestep_power": step.inferer.timestep_power,
            "crop_size": step.inferer.crop_size,
            "hourglass_norm": step.synth.denoiser.hourglass_norm,
            "mmd_weight": step.loss_fn.mmd_weight,
            "loss_distance": step.loss_fn.denoising.distance,
            "learning_rate": bc.bundle_learning_rate(),
        }
    if name == "unet_l1":
        return bc.UNetL1Step(), {
            "learning_rate": bc.BASELINE_LEARNING_RATE,
            "network": "monai.networks.nets.UNet",
            **{k: list(v) if isinstance(v, tuple) else v for k, v in bc.UNET_L1_ARGS.items()},
            "loss": "L1",
        }
    if name == "ddpm_unet":
        return bc.DDPMUNetStep(ddim_steps=ddim_steps), {
            "network": "monai DiffusionModelUNet",
            "learning_rate": bc.BASELINE_LEARNING_RATE,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in bc.DDPM_UNET_ARGS.items()},
            "train": "DDPM, 1000 linear-beta steps, epsilon-MSE",
            "sampler": f"DDIM {ddim_steps} steps, eta 0",
        }
    raise ValueError(name)


def schedule_factor(schedule: str, fraction: float, warmup: float = 0.1) -> float:
    """Learning-rate multiplier at ``fraction`` of the budget: ``constant``, or ``warmup_cosine`` (the bundle's
    WarmupCosineSchedule with its warm-up tenth, on elapsed training time instead of steps)."""
    if schedule == "constant":
        return 1.0
    if fraction < warmup:
        return fraction / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (fraction - warmup) / (1.0 - warmup))))


def train_row(name, loader, preprocessing, seed, budget, curve_fracs, curve_eval, ddim_steps) -> tuple[object, dict]:
    set_determinism(seed)
    preprocessing.set_random_state(seed)
    torch.manual_seed(seed)
    step, info = build_row(name, ddim_steps)
    info["params"] = bc.num_params(step.model)
    schedule = info["schedule"] = "warmup_cosine" if name in PHMDIFF_ROWS else "constant"
    base_lrs = [group["lr"] for group in step.opt.param_groups]
    it = iter(loader)
    trained, steps, images, losses, curve = 0.0, 0, 0, [], []
    pending = [f * budget for f in curve_fracs]
    while trained < budget:
        start = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        for group, base_lr in zip(step.opt.param_groups, base_lrs):
            group["lr"] = base_lr * schedule_factor(schedule, trained / budget)
        source, target = (
            batch["image"].as_tensor() if hasattr(batch["image"], "as_tensor") else batch["image"],
            batch["label"],
        )
        target = target.as_tensor() if hasattr(target, "as_tensor") else target
        losses.append(step.train_on(source.float(), target.float()))
        trained += time.perf_counter() - start
        steps += 1
        images += source.shape[0]
        if not math.isfinite(losses[-1]):
            info["diverged"] = True
            break
        while pending and trained >= pending[0] and trained < budget:
            pending.pop(0)
            curve.append({"train_seconds": trained, "steps": steps, **curve_eval(step)})
    info.update(
        {
            "train_seconds": trained,
            "steps": steps,
            "images": images,
            "seed": seed,
            "final_loss_mean_last10": float(np.mean(losses[-10:])) if losses else None,
            "curve": curve,
        }
    )
    return step, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=25.0, help="training seconds per learned row")
    parser.add_argument("--eval-slices", type=int, default=4, help="slices per test subject (0 = all)")
    parser.add_argument("--curve-slices", type=int, default=2, help="slices per subject for learning-curve points")
    parser.add_argument("--curve-points", type=int, default=2, help="intermediate learning-curve points per row")
    parser.add_argument("--ddim-steps", type=int, default=5, help="DDIM steps of the DDPM UNet baseline")
    parser.add_argument("--mean-seeds", type=int, default=3, help="samples averaged for the posterior mean")
    parser.add_argument(
        "--rows",
        default=",".join(LEARNED_ROWS),
        help=f"comma-separated learned rows (default: every learned row but {', '.join(CAPACITY_ROWS)})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shipped", default=str(bc.ROOT / "bundle" / "models" / "model.pt"))
    parser.add_argument(
        "--shipped-network",
        type=json.loads,
        default={},
        help="JSON overrides of inference.json's network_def that the --shipped checkpoint was trained with, "
        'e.g. \'{"hourglass_norm": "channel"}\'',
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not isinstance(args.shipped_network, dict):
        parser.error(f"--shipped-network must be a JSON object, got {args.shipped_network!r}")
    wall = time.perf_counter()

    dataset_dir = demo_dataset_dir()
    cfg = bc.bundle_parser(bc.TRAIN_CONFIG, dataset_dir=str(dataset_dir))
    cfg.parse()
    loader = cfg.get_parsed_content("train#dataloader")
    preprocessing = cfg.get_parsed_content("train#preprocessing")
    subjects = load_test_set(cfg, dataset_dir, args.eval_slices)
    curve_subjects = [
        {k: (v[: args.curve_slices] if torch.is_tensor(v) else v) for k, v in s.items()} for s in subjects
    ]
    data_seconds = time.perf_counter() - wall

    def curve_eval(step) -> dict:
        return {
            k: v for k, v in score(predict_all(step, curve_subjects), curve_subjects).items() if not k.endswith("_std")
        }

    rows: dict[str, dict] = {}
    start = time.perf_counter()
    cache = getattr(loader.dataset, "_cache", None)  # CacheDataset: the load transforms' output per volume
    train_items = cache if cache and all(isinstance(c, dict) and "label" in c for c in cache) else None
    rows["linear_remap"], linear_fit = linear_remap(train_items or training_volumes(cfg, dataset_dir), subjects)
    rows["linear_remap"]["fit"] = linear_fit
    rows["oracle_remap"] = oracle_remap(subjects)
    rows["oracle_remap"]["note"] = "fitted on each test subject itself: an upper bound for voxel-wise mappings"
    baseline_seconds = time.perf_counter() - start

    for name in [r for r in args.rows.split(",") if r]:
        step, info = train_row(
            name,
            loader,
            preprocessing,
            args.seed,
            args.budget,
            [(i + 1) / (args.curve_points + 1) for i in range(args.curve_points)],
            curve_eval,
            args.ddim_steps,
        )
        start = time.perf_counter()
        preds = predict_all(step, subjects, seed=0)
        info["eval_seconds"] = time.perf_counter() - start
        info.update(score(preds, subjects))
        final_curve = score(preds, subjects, limit=args.curve_slices)
        info["curve"].append(
            {
                "train_seconds": info["train_seconds"],
                "steps": info["steps"],
                **{k: v for k, v in final_curve.items() if not k.endswith("_std")},
            }
        )
        if name in PHMDIFF_ROWS or name == "ddpm_unet":
            info.update(sampling_modes(step, subjects, preds, args.mean_seeds))
        rows[name] = info
        print(
            f"{name}: {info['steps']} steps, psnr_whole {info['psnr_whole']:.2f}, ssim_whole {info['ssim_whole']:.4f}",
            flush=True,
        )
        del step

    shipped = Path(args.shipped)
    if shipped.is_file():
        network = {**bc.bundle_network_config(bc.INFER_CONFIG), **args.shipped_network}
        synth = bc.PHMDiffSynthesizer(**network)
        synth.load_state_dict(torch.load(shipped, map_location="cpu", weights_only=True))
        step = bc.PHMDiffStep(synth)
        preds = predict_all(step, subjects, seed=0)
        row = {
            "checkpoint": str(shipped),
            "network": network,
            **score(preds, subjects),
        }
        row.update(sampling_modes(step, subjects, preds, args.mean_seeds))
        row["steps_sweep"] = {}
        for steps in SWEEP_STEPS:
            start = time.perf_counter()
            sweep_preds = predict_all(step, subjects, steps=steps)
            row["steps_sweep"][str(steps)] = {
                "predict_seconds": time.perf_counter() - start,
                **score(sweep_preds, subjects),
            }
        rows["phmdiff_shipped"] = row
    else:
        rows["phmdiff_shipped"] = {"skipped": f"no checkpoint at {shipped}"}

    result = {
        "dataset_dir": str(dataset_dir),
        "test_subjects": [s["name"] for s in subjects],
        "eval_slices_per_subject": args.eval_slices or "all",
        "slice_indices": {Path(s["name"]).parent.name: s["slices"] for s in subjects},
        "curve_slices_per_subject": args.curve_slices,
        "budget_seconds_per_row": args.budget,
        "seed": args.seed,
        "ddim_steps_ddpm_unet": args.ddim_steps,
        "rows": rows,
        "data_loading_seconds": data_seconds,
        "baseline_seconds": baseline_seconds,
        "quality_wall_seconds": time.perf_counter() - wall,
        "peak_rss_mb": bc.peak_rss_mb(),
        "load_average": bc.load_average(),
    }
    Path(args.out).write_text(json.dumps(result, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()

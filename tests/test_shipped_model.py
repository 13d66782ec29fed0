"""The shipped weights beat the identity and a linear intensity remap on the demo test subjects, inside the brain
too, and draw no patch grid."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.metrics import SSIMMetric

from custom.data import generate_demo_dataset
from custom.metrics import blockiness, masked_psnr
from custom.transforms import ForegroundSlicesd, ModalityNormalize

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
SLICES_PER_SUBJECT = 4

pytestmark = pytest.mark.slow


def _load(path: Path) -> torch.Tensor:
    return ModalityNormalize("MR")(torch.as_tensor(nib.load(path).get_fdata(), dtype=torch.float32)[None])


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(SSIMMetric(spatial_dims=2, data_range=2.0)(pred, target).mean())


@pytest.fixture(scope="module")
def slices(tmp_path_factory):
    """Source/target slices of the 4 default demo test subjects (seeded per split: the same as the bundle's), and
    one training subject to fit the linear remap on, as a user without the target would."""
    folder = tmp_path_factory.mktemp("demo") / "data"
    generate_demo_dataset(folder, num_training=1, num_validation=1, num_test=4)
    datalist = json.loads((folder / "datalist.json").read_text())
    sampler = ForegroundSlicesd(keys=["image", "label", "mask"], num_slices=SLICES_PER_SUBJECT)
    sources, targets, masks = [], [], []
    for entry in datalist["test"]:
        brain = torch.as_tensor(np.asarray(nib.load(folder / entry["mask"]).dataobj), dtype=torch.float32)[None]
        volumes = {"image": _load(folder / entry["image"]), "label": _load(folder / entry["label"]), "mask": brain}
        for sample in sampler(volumes):
            sources.append(sample["image"])
            targets.append(sample["label"])
            masks.append(sample["mask"])
    train = datalist["training"][0]
    return (
        torch.stack(sources),
        torch.stack(targets),
        torch.stack(masks),
        _load(folder / train["image"]),
        _load(folder / train["label"]),
    )


def test_shipped_model_beats_identity_and_linear_remap(slices):
    sources, targets, brain, train_source, train_target = slices
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    network = parser.get_parsed_content("network_def").eval()
    network.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", weights_only=True))
    with torch.inference_mode():
        synthesis = network(sources)

    slope, intercept = np.polyfit(train_source.flatten().numpy(), train_target.flatten().numpy(), 1)
    baselines = {"identity": sources, "linear remap": (sources * float(slope) + float(intercept)).clamp(-1, 1)}
    ours = masked_psnr(synthesis, targets), ssim(synthesis, targets)
    report = {name: (masked_psnr(pred, targets), ssim(pred, targets)) for name, pred in baselines.items()}
    print(
        f"\nPHMDiff PSNR {ours[0]:.2f} dB SSIM {ours[1]:.4f}; "
        + "; ".join(f"{name} PSNR {p:.2f} dB SSIM {s:.4f}" for name, (p, s) in report.items())
    )
    for name, (baseline_psnr, baseline_ssim) in report.items():
        assert ours[0] > baseline_psnr + 1.0, name
        assert ours[1] > baseline_ssim, name
        assert masked_psnr(synthesis, targets, brain) > masked_psnr(baselines[name], targets, brain) + 1.0, name
    # no mosaic: edges on the finest token grid no stronger than in the target (the goal: <= 1.10)
    stride = network.denoiser.token_stride(0)
    block = blockiness(synthesis, targets, stride, brain)
    print(f"blockiness on the {stride}-pixel token grid: {block:.3f}")
    assert block <= 1.10

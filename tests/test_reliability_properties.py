"""Property: any reasonable NIfTI volume (shape, spacing, orientation, intensity range) goes through the inference
config's preprocessing, the shipped synthesiser (bundle/models/model.pt in the config's ``network_def``) and the
inverse mapping (postprocessing without the saver) back onto the input's own grid: same shape, same affine, finite
values in the target range, and an image that follows the input (not a constant: an untrained adaLN-Zero network
outputs exactly 0, which no claim here may pass on)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monai.bundle import ConfigParser
from monai.transforms import Compose, SaveImaged

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "bundle" / "configs" / "inference.json"
WEIGHTS = REPO / "bundle" / "models" / "model.pt"
MR_RANGE = (0.0, 1000.0)  # ModalityDenormalize's default mr_range: where the synthesis puts its grey levels


def inference_parts():
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser.update({"slice_batch_size": 64, "spacing": [3.0, 3.0, 3.0]})  # coarse grid: small images, fast
    post = parser.get_parsed_content("postprocessing")
    post = Compose([t for t in post.transforms if not isinstance(t, SaveImaged)])  # no files written here
    network = parser.get_parsed_content("network").eval()
    network.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return parser.get_parsed_content("preprocessing"), network, parser.get_parsed_content("inferer"), post


PREPROCESSING, NETWORK, INFERER, POSTPROCESSING = inference_parts()


@st.composite
def volumes(draw):
    shape = tuple(draw(st.integers(6, 14)) for _ in range(3))
    spacing = [draw(st.floats(1.0, 4.0)) for _ in range(3)]
    axes = draw(st.permutations([0, 1, 2]))
    signs = [draw(st.sampled_from([-1.0, 1.0])) for _ in range(3)]
    affine = np.zeros((4, 4))
    for column, (axis, sign, step) in enumerate(zip(axes, signs, spacing)):
        affine[axis, column] = sign * step  # any axis order and flip: LPS, RAS, PIL, ...
    affine[:3, 3] = [draw(st.floats(-100, 100)) for _ in range(3)]
    affine[3, 3] = 1.0
    low = draw(st.floats(0.0, 2000.0))  # MR magnitude: negative images are refused (tests/test_nifti_eligibility.py)
    scale = draw(st.floats(1e-2, 5000.0))
    seed = draw(st.integers(0, 2**16))
    data = low + scale * np.random.default_rng(seed).random(shape)
    return data.astype(np.float32), affine


def synthesise(path: Path) -> torch.Tensor:
    item = PREPROCESSING({"image": str(path)})
    with torch.no_grad():
        item["pred"] = INFERER(item["image"][None], NETWORK)[0]
    return POSTPROCESSING(item)["pred"]


@settings(max_examples=5, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(volume=volumes())
def test_inference_round_trip_keeps_the_input_grid(tmp_path, volume):
    data, affine = volume
    path = tmp_path / "input.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    pred = synthesise(path)
    assert tuple(pred.shape) == (1, *data.shape)
    np.testing.assert_allclose(np.asarray(pred.affine), affine, atol=1e-4)
    values = torch.as_tensor(pred)
    assert torch.isfinite(values).all()
    assert MR_RANGE[0] <= float(values.min()) and float(values.max()) <= MR_RANGE[1]
    assert float(values.std()) > 1.0, "a constant synthesis: the network outputs nothing that depends on the image"
    # another image on the same grid (the volume mirrored) gets another synthesis: the network reads its input
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data[::-1]), affine), str(path))
    other = torch.as_tensor(synthesise(path))
    assert float((other - values).abs().mean()) > 1.0, "the synthesis does not depend on the input image"

"""Tests of PHMDiff training: inferer outputs, batch preparation, a SupervisedTrainer run, and overfitting one slice."""

from __future__ import annotations

import unittest

import numpy as np
import pytest
import torch
from monai.data import decollate_batch
from monai.engines import SupervisedTrainer
from monai.metrics import PSNRMetric
from monai.utils import set_determinism
from parameterized import parameterized

from custom.data import load_mni152
from custom.engines import PHMDiffPrepareBatch
from custom.inferers import PHMDiffTrainingInferer
from custom.losses import PHMDiffLoss
from custom.networks.layers import ImagePyramid, PyramidUpsample, pad_to_multiple
from custom.networks.nets import LevelOutput, PHMDiffSynthesizer
from test_phmdiff_networks import randomise_zero_layers

OVERFIT_STEPS = 100  # optimiser steps of the overfitting test (about 20 s of one CPU core)
OVERFIT_MARGIN_DB = 5.0  # PSNR margin over the better of the identity and zero baselines

# (synthesiser kwargs, inferer kwargs, input shape)
INFERER_CASES = [
    [{"spatial_dims": 2}, {"mask_ratio": 0.5}, (2, 1, 99, 117)],
    [{"spatial_dims": 2, "prediction_type": "v_prediction"}, {"mask_ratio": (0.75, 0.5, 0.0)}, (2, 1, 64, 48)],
    [{"spatial_dims": 3, "patch_size": 2, "num_levels": 2}, {"mask_ratio": 0.5}, (2, 1, 27, 33, 21)],
]


def mni_t1_t2_slice_pair(z: int = 45) -> tuple[np.ndarray, np.ndarray]:
    """
    One real axial 2-mm slice (99 x 117) of the MNI ICBM152 T1 template shipped with nilearn, and a T2-like target
    made from the template's grey/white-matter probability maps (T2 weighting: CSF bright, grey matter mid, white
    matter dark), both scaled to [-1, 1].
    """
    t1, gm, wm, brain = (
        load_mni152(kind, resolution=2)[0][:, :, z].astype(np.float64) for kind in ("t1", "gm", "wm", "mask")
    )
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    t2 = 1.0 * csf + 0.6 * gm + 0.35 * wm

    def scale(x: np.ndarray) -> np.ndarray:
        return np.clip(x / np.percentile(x, 99.5), 0.0, 1.0) * 2.0 - 1.0

    return scale(t1).astype(np.float32), scale(t2).astype(np.float32)


class TestTrainingInferer(unittest.TestCase):
    @parameterized.expand(INFERER_CASES)
    def test_outputs(self, net_kwargs, inferer_kwargs, shape):
        net = PHMDiffSynthesizer(preset="T", **net_kwargs)
        source, target = torch.rand(shape) * 2 - 1, torch.rand(shape) * 2 - 1
        out = PHMDiffTrainingInferer(**inferer_kwargs)(source, net, target=target)
        self.assertIsInstance(out, list)
        self.assertEqual(len(out), net.num_levels)
        for level, record in enumerate(out):  # finest first
            self.assertIsInstance(record, LevelOutput)
            self.assertEqual(record.level, level)
            extent = tuple(-(-s // 2**level) for s in shape[2:])
            self.assertEqual(tuple(record.prediction.shape), shape[:2] + extent)
            self.assertEqual(tuple(record.regression_target.shape), shape[:2] + extent)
            self.assertEqual(tuple(record.keep_mask.shape), (shape[0], 1) + extent)
            self.assertEqual(tuple(record.features.shape), (shape[0], net.denoiser.hidden_size))
            self.assertEqual(tuple(record.timesteps.shape), (shape[0],))
            self.assertTrue(record.prediction.requires_grad)
        loss = PHMDiffLoss()(out, target)
        loss.backward()
        self.assertTrue(torch.isfinite(loss))
        self.assertGreater(float(net.denoiser.head[-1].weight.grad.abs().sum()), 0.0)  # the zero output layer learns

    @parameterized.expand([["model"], ["target"]])
    def test_prior_of_the_finer_level(self, prior_source):
        """prior_source "model": the finer level's prior is the coarser level's own clean estimate (up-sampled,
        detached), as at inference; "target": the down-sampled ground truth."""
        torch.manual_seed(0)
        net = PHMDiffSynthesizer(preset="T", num_levels=2, prediction_type="sample")
        randomise_zero_layers(net.denoiser)
        inputs = {}
        net.denoiser.register_forward_pre_hook(lambda _m, args: inputs.__setitem__(args[2], args[0]))
        source, target = torch.rand(2, 1, 32, 28) * 2 - 1, torch.rand(2, 1, 32, 28) * 2 - 1
        inferer = PHMDiffTrainingInferer(mask_ratio=0.0, prior_noise_std=0.0, prior_source=prior_source)
        out = inferer(source, net, target=target)
        pyramid, upsample = ImagePyramid(2, 2), PyramidUpsample(2)  # the synthesiser's pyramid, built alike
        coarse = out[1].prediction.clamp(-1, 1) if prior_source == "model" else pyramid(target)[1]
        torch.testing.assert_close(inputs[0][:, 2:3], upsample(coarse, [32, 28]))
        if prior_source == "model":  # not the ground truth
            self.assertFalse(torch.allclose(inputs[0][:, 2:3], upsample(pyramid(target)[1], [32, 28])))
        self.assertTrue(torch.all(inputs[1][:, 2:3] == 0))  # the coarsest level has no prior

    def test_timestep_power(self):
        """k = 1 keeps torch.randint's draws (runs before the option reproduce); k = 2 puts about 32% of the draws in
        the noisiest tenth (0.1 ** 0.5) instead of 10%, and every timestep stays in [0, T)."""
        net, image = PHMDiffSynthesizer(preset="T", num_levels=1, num_train_timesteps=100), torch.zeros(4, 1, 16, 16)
        torch.manual_seed(5)
        uniform = net.training_outputs(image, image, timestep_power=1.0)[0].timesteps
        torch.manual_seed(5)
        self.assertTrue(torch.equal(uniform, torch.randint(0, 100, (4,))))
        torch.manual_seed(0)
        draws = {power: net._training_timesteps(20000, power, torch.device("cpu")) for power in (1.0, 2.0, 0.5)}
        for power, t in draws.items():
            self.assertEqual(t.dtype, torch.int64)
            self.assertTrue(bool((t >= 0).all() and (t < 100).all()), power)
        noisiest_tenth = {power: float((t >= 90).double().mean()) for power, t in draws.items()}
        self.assertAlmostEqual(noisiest_tenth[1.0], 0.10, delta=0.01)
        self.assertAlmostEqual(noisiest_tenth[2.0], 0.1**0.5, delta=0.015)
        self.assertAlmostEqual(noisiest_tenth[0.5], 0.1**2, delta=0.005)
        torch.manual_seed(5)
        high_noise = PHMDiffTrainingInferer(timestep_power=2.0)(image, net, target=image)[0].timesteps
        torch.manual_seed(5)
        self.assertTrue(torch.equal(high_noise, net._training_timesteps(4, 2.0, torch.device("cpu"))))

    @parameterized.expand([[1], [2]])
    def test_crop_training(self, unshuffle):
        """crop_size: the finest level trains on one window per batch, cut from the padded image at a multiple of the
        token stride, with its tokens' position embedding in the whole image; the coarser levels stay whole; a window
        as large as the image is the whole-image pass, draw for draw. The same with the pixel-unshuffle hourglass,
        whose token stride is twice the other's."""
        torch.manual_seed(0)
        net = PHMDiffSynthesizer(
            preset="T", prediction_type="sample", hourglass_norm="channel", pixel_unshuffle=unshuffle
        )
        stride = net.denoiser.token_stride(0)
        source, target = torch.rand(2, 1, 37, 45) * 2 - 1, torch.rand(2, 1, 37, 45) * 2 - 1
        offsets = []
        net.denoiser.register_forward_pre_hook(lambda _m, args: offsets.append(args[4]) if args[2] == 0 else None)
        out = PHMDiffTrainingInferer(crop_size=(2 * stride, 3 * stride))(source, net, target=target)
        self.assertEqual(tuple(out[0].prediction.shape), (2, 1, 2 * stride, 3 * stride))
        self.assertEqual(tuple(out[0].keep_mask.shape), (2, 1, 2 * stride, 3 * stride))
        self.assertEqual(tuple(out[1].prediction.shape), (2, 1, 19, 23))  # the coarser levels are whole
        padded = pad_to_multiple(target, [stride, stride])
        row, col = offsets[0]
        window = padded[:, :, row * stride : (row + 2) * stride, col * stride : (col + 3) * stride]
        torch.testing.assert_close(out[0].regression_target, window, atol=1e-4, rtol=1e-4)  # x0 prediction: the window
        PHMDiffLoss()(out, target).backward()
        self.assertGreater(float(net.denoiser.head[-1].weight.grad.abs().sum()), 0.0)

        seen = set()
        crop = [padded.shape[2] - 2 * stride, padded.shape[3] - 2 * stride]  # 3 aligned positions per axis
        for seed in range(60):  # every aligned window position is drawn, and only those
            torch.manual_seed(seed)
            offsets.clear()
            net.training_outputs(source, target, crop_size=crop)
            seen.add(tuple(offsets[0]))
        self.assertEqual(seen, {(r, c) for r in range(3) for c in range(3)})

        for crop in (None, 100 * stride):
            torch.manual_seed(4)
            records = net.training_outputs(source, target, crop_size=crop)
            if crop is None:
                whole = records
        for a, b in zip(whole, records):
            self.assertTrue(torch.equal(a.prediction, b.prediction))
        with self.assertWarnsRegex(UserWarning, "hourglass_norm='channel'"):  # group norm sees other statistics
            PHMDiffSynthesizer(preset="T").training_outputs(source, target, crop_size=2 * stride)

    def test_ill_arguments(self):
        for power in (0.0, -1.0, float("nan"), float("inf"), "2"):
            with self.assertRaisesRegex(ValueError, "timestep_power"):
                PHMDiffTrainingInferer(timestep_power=power)
        with self.assertRaisesRegex(ValueError, "prior_source"):
            PHMDiffTrainingInferer(prior_source="oracle")
        with self.assertRaisesRegex(ValueError, "mask_ratio"):
            PHMDiffTrainingInferer(mask_ratio=1.0)
        with self.assertRaisesRegex(ValueError, "prior_noise_std"):
            PHMDiffTrainingInferer(prior_noise_std=-1.0)
        for crop in (0, -8, 8.5, True, [], [8, 0]):
            with self.assertRaisesRegex(ValueError, "crop_size"):
                PHMDiffTrainingInferer(crop_size=crop)
        net, image = PHMDiffSynthesizer(preset="T", num_levels=2), torch.zeros(1, 1, 16, 16)
        with self.assertRaisesRegex(ValueError, "mask_ratio"):  # the network checks the same options per call
            net.training_outputs(image, image, mask_ratio=(0.5, 1.0))
        with self.assertRaisesRegex(ValueError, "crop_size must have 1 or 2 entries"):
            net.training_outputs(image, image, crop_size=(8, 8, 8))
        with self.assertRaisesRegex(ValueError, "multiples of the finest level's token stride"):
            net.training_outputs(image, image, crop_size=net.denoiser.token_stride(0) + 1)
        with self.assertRaisesRegex(ValueError, "share batch and spatial size"):
            PHMDiffTrainingInferer()(image, net, target=torch.zeros(1, 1, 16, 12))
        with self.assertRaisesRegex(TypeError, "PHMDiffSynthesizer"):
            PHMDiffTrainingInferer()(image, torch.nn.Identity(), target=image)

    def test_inferer_is_the_network_training_pass(self):
        """The inferer only calls ``training_outputs`` (on the network or its ``.module``): same RNG, same tensors."""
        net = PHMDiffSynthesizer(preset="T", prediction_type="sample")
        source, target = torch.rand(2, 1, 40, 36) * 2 - 1, torch.rand(2, 1, 40, 36) * 2 - 1
        options = {"mask_ratio": (0.5, 0.25, 0.0), "prior_noise_std": 0.2, "prior_source": "model"}
        torch.manual_seed(3)
        direct = net.training_outputs(source, target, **options)
        torch.manual_seed(3)
        wrapped = PHMDiffTrainingInferer(**options)(source, torch.nn.ModuleDict({"module": net}), target=target)
        self.assertEqual([o.level for o in direct], list(range(net.num_levels)))
        for a, b in zip(direct, wrapped):
            self.assertEqual(a.level, b.level)
            for name in ("prediction", "regression_target", "keep_mask", "features", "timesteps"):
                self.assertTrue(torch.equal(getattr(a, name), getattr(b, name)), name)

    def test_prepare_batch_and_trainer(self):
        set_determinism(0)
        net = PHMDiffSynthesizer(preset="T")
        batch = {"image": torch.rand(2, 1, 32, 32), "label": torch.rand(2, 1, 32, 32)}
        source, target, args, kwargs = PHMDiffPrepareBatch()(batch, torch.device("cpu"))
        self.assertTrue(torch.equal(source, batch["image"]) and torch.equal(target, batch["label"]))
        self.assertEqual(args, ())
        self.assertIs(kwargs["target"], target)
        trainer = SupervisedTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=[batch, batch],
            network=net,
            optimizer=torch.optim.Adam(net.parameters(), 1e-3),
            loss_function=PHMDiffLoss(),
            inferer=PHMDiffTrainingInferer(),
            prepare_batch=PHMDiffPrepareBatch(),
        )
        trainer.run()  # decollate=True (the default): the per-level records must decollate with the batch
        self.assertTrue(np.isfinite(float(trainer.state.output[0]["loss"])))
        self.assertEqual(len(trainer.state.output), 2)  # one entry per sample
        self.assertEqual(len(trainer.state.output[0]["pred"]), net.num_levels)
        set_determinism(None)

    def test_level_outputs_decollate(self):
        """MONAI's decollate_batch splits a list of LevelOutput into per-sample entries (a dataclass would raise)."""
        net = PHMDiffSynthesizer(preset="T", num_levels=2)
        image = torch.rand(3, 1, 16, 16)
        items = decollate_batch({"pred": net.training_outputs(image, image), "loss": torch.tensor(1.0)})
        self.assertEqual(len(items), 3)
        level, prediction = items[1]["pred"][0][:2]  # sample 1, finest level: the record's fields in order
        self.assertEqual(level, 0)
        self.assertEqual(tuple(prediction.shape), (1, 16, 16))


@pytest.mark.slow
class TestOverfitOneSlice(unittest.TestCase):
    def test_synthesis_beats_baselines(self):
        """
        A tiny PHMDiff trained a bounded number of CPU steps on one real T1/T2-like slice pair synthesises it.
        x0 ("sample") prediction converges in the fewest steps (epsilon needs several times more for the same PSNR);
        the other parameterisations share all code but the one conversion, tested in test_phmdiff_networks.
        """
        set_determinism(0)
        t1, t2 = mni_t1_t2_slice_pair()
        source = torch.from_numpy(t1)[None, None]  # (1, 1, 99, 117)
        target = torch.from_numpy(t2)[None, None]
        net = PHMDiffSynthesizer(preset="T", hidden_size=48, depth=2, num_inference_steps=10, prediction_type="sample")
        inferer, loss_fn = PHMDiffTrainingInferer(mask_ratio=0.5, prior_noise_std=0.05), PHMDiffLoss()
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.0)
        batch_source, batch_target = source.expand(4, -1, -1, -1), target.expand(4, -1, -1, -1)
        net.train()
        for _ in range(OVERFIT_STEPS):
            opt.zero_grad()
            loss_fn(inferer(batch_source, net, target=batch_target), batch_target).backward()
            opt.step()
        net.eval()
        synthesis = net(source)
        psnr = PSNRMetric(max_val=2.0)
        value = psnr(synthesis, target).item()
        identity, zero = psnr(source, target).item(), psnr(torch.zeros_like(target), target).item()
        print(f"overfit PSNR {value:.2f} dB; identity {identity:.2f} dB; zero {zero:.2f} dB")
        self.assertGreater(value, max(identity, zero) + OVERFIT_MARGIN_DB)
        set_determinism(None)


if __name__ == "__main__":
    unittest.main()

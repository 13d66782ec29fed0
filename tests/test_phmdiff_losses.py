"""Tests of the PHMDiff losses: masked denoising loss, Gaussian MMD (against a hand computation), combined loss."""

from __future__ import annotations

import math
import unittest

import numpy as np
import torch
from parameterized import parameterized

from custom.losses import GaussianMMDLoss, MaskedDenoisingLoss, PHMDiffLoss
from custom.networks.nets import LevelOutput

MMD_SHIFT_CASES = [[None], [(0.5, 1.0, 2.0)]]

ILL_CASES = [
    [MaskedDenoisingLoss, {"masked_weight": -1.0}, "masked_weight"],
    [MaskedDenoisingLoss, {"reduction": "avg"}, "reduction"],
    [MaskedDenoisingLoss, {"distance": "huber"}, "distance"],
    [GaussianMMDLoss, {"bandwidths": [0.0]}, "bandwidths"],
    [GaussianMMDLoss, {"bandwidth_multipliers": []}, "bandwidth_multipliers"],
    [PHMDiffLoss, {"mmd_weight": -0.1}, "mmd_weight"],
    [PHMDiffLoss, {"level_weights": [1.0, -1.0]}, "level_weights"],
]


def _mmd2_by_hand(x: np.ndarray, y: np.ndarray, sigmas: list[float]) -> float:
    """Biased squared MMD with k(a, b) = mean_s exp(-|a - b|^2 / (2 s^2)), written out with loops."""

    def k(a, b):
        d2 = sum((a[i] - b[i]) ** 2 for i in range(len(a)))
        return sum(math.exp(-d2 / (2 * s * s)) for s in sigmas) / len(sigmas)

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n)) / (n * n)
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


class TestMaskedDenoisingLoss(unittest.TestCase):
    def test_l1_distance_by_hand(self):
        pred = torch.tensor([[[[1.0, -2.0], [0.5, 0.0]]]])
        target = torch.zeros_like(pred)
        keep = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
        loss = MaskedDenoisingLoss(masked_weight=0.5, distance="l1")(pred, target, keep)
        self.assertAlmostEqual(float(loss), (1.0 + 2.0) / 2 + 0.5 * (0.5 + 0.0) / 2)

    def test_all_visible_is_mse(self):
        pred, target = torch.randn(3, 2, 8, 8), torch.randn(3, 2, 8, 8)
        loss = MaskedDenoisingLoss()(pred, target, torch.ones(3, 1, 8, 8))
        torch.testing.assert_close(loss, torch.mean((pred - target) ** 2))

    def test_visible_and_masked_terms(self):
        pred, target = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
        keep = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
        loss = MaskedDenoisingLoss(masked_weight=0.1, reduction="none")(pred, target, keep)
        torch.testing.assert_close(loss, torch.tensor([(1 + 4) / 2 + 0.1 * (9 + 16) / 2]))

    def test_shape_mismatch(self):
        with self.assertRaisesRegex(ValueError, "shape"):
            MaskedDenoisingLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))


class TestGaussianMMDLoss(unittest.TestCase):
    def test_hand_computation(self):
        x = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 2.0]])
        y = np.array([[0.0, 1.0], [2.0, 2.0]])
        expected = _mmd2_by_hand(x, y, [1.0, 2.0])
        got = GaussianMMDLoss(bandwidths=[1.0, 2.0])(torch.tensor(x), torch.tensor(y))
        self.assertAlmostEqual(got.item(), expected, places=10)

    def test_unbiased_hand_computation(self):
        x, y = np.array([[0.0], [1.0], [3.0]]), np.array([[0.5], [2.0]])
        k = lambda a, b: math.exp(-((a - b) ** 2) / 2.0)  # noqa: E731  sigma = 1
        kxx = sum(k(x[i, 0], x[j, 0]) for i in range(3) for j in range(3) if i != j) / 6
        kyy = sum(k(y[i, 0], y[j, 0]) for i in range(2) for j in range(2) if i != j) / 2
        kxy = sum(k(x[i, 0], y[j, 0]) for i in range(3) for j in range(2)) / 6
        got = GaussianMMDLoss(bandwidths=[1.0], unbiased=True)(torch.tensor(x), torch.tensor(y))
        self.assertAlmostEqual(got.item(), kxx + kyy - 2 * kxy, places=10)

    @parameterized.expand(MMD_SHIFT_CASES)
    def test_same_distribution_and_mean_shift(self, bandwidths):
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(256, 4, generator=gen), torch.randn(256, 4, generator=gen)
        mmd = GaussianMMDLoss(bandwidths=bandwidths)
        values = [mmd(x, y + shift).item() for shift in (0.0, 0.25, 0.5, 1.0, 2.0)]
        self.assertLess(values[0], 0.01)
        self.assertTrue(all(a < b for a, b in zip(values, values[1:])), values)
        self.assertGreater(values[-1], 10 * values[0])

    def test_grouped_reduction_and_gradient(self):
        x = torch.randn(3, 8, 5, requires_grad=True)
        per_group = GaussianMMDLoss(reduction="none")(x, torch.randn(3, 8, 5) + 1)
        self.assertEqual(tuple(per_group.shape), (3,))
        per_group.mean().backward()
        self.assertTrue(torch.isfinite(x.grad).all())

    @parameterized.expand(ILL_CASES)
    def test_ill_arguments(self, cls, kwargs, name):
        with self.assertRaisesRegex(ValueError, name):
            cls(**kwargs)


class TestPHMDiffLoss(unittest.TestCase):
    def _outputs(self, levels: int = 3, b: int = 4) -> list[LevelOutput]:
        out = []
        for level in range(levels):
            s = 16 // 2**level
            out.append(
                LevelOutput(
                    level=level,
                    prediction=torch.randn(b, 1, s, s),
                    regression_target=torch.randn(b, 1, s, s),
                    keep_mask=(torch.rand(b, 1, s, s) > 0.5).float(),
                    features=torch.randn(b, 12),
                    timesteps=torch.randint(0, 1000, (b,)),
                )
            )
        return out

    def test_combination(self):
        out = self._outputs()
        denoise = MaskedDenoisingLoss(masked_weight=0.1)
        mmd = GaussianMMDLoss()
        expected = sum(denoise(o.prediction, o.regression_target, o.keep_mask) for o in out)
        expected = expected + 0.1 * sum(mmd(out[i].features, out[i + 1].features) for i in range(2))
        torch.testing.assert_close(PHMDiffLoss(mmd_weight=0.1)(out, None), expected)
        torch.testing.assert_close(PHMDiffLoss(mmd_weight=0.1)(tuple(out), None), expected)  # any sequence
        self.assertEqual(tuple(PHMDiffLoss(reduction="none")(out, None).shape), (4,))

    def test_level_weights_follow_the_level(self):
        out = self._outputs()
        denoise = MaskedDenoisingLoss(masked_weight=0.1)
        expected = sum(
            w * denoise(o.prediction, o.regression_target, o.keep_mask) for w, o in zip([1.0, 0.5, 0.0], out)
        )
        torch.testing.assert_close(PHMDiffLoss(mmd_weight=0.0, level_weights=[1.0, 0.5, 0.0])(out, None), expected)

    def test_wrong_input(self):
        out = self._outputs()
        with self.assertRaisesRegex(TypeError, "sequence of LevelOutput.*got dict"):  # the former dict of pred_ℓ keys
            PHMDiffLoss()({"pred_0": out[0].prediction}, None)
        with self.assertRaisesRegex(TypeError, "single LevelOutput"):
            PHMDiffLoss()(out[0], None)
        with self.assertRaisesRegex(TypeError, "got Tensor at index 0"):
            PHMDiffLoss()([out[0].prediction], None)
        with self.assertRaisesRegex(TypeError, "got Tensor"):
            PHMDiffLoss()(out[0].prediction, None)
        with self.assertRaisesRegex(ValueError, "empty"):
            PHMDiffLoss()([], None)
        with self.assertRaisesRegex(ValueError, "index 0 holds level 2"):  # coarsest first is refused
            PHMDiffLoss()(out[::-1], None)
        with self.assertRaisesRegex(ValueError, "level_weights"):
            PHMDiffLoss(level_weights=[1.0])(out, None)


if __name__ == "__main__":
    unittest.main()

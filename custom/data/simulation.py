"""Physics-based simulation of paired multi-contrast brain MR from the MNI ICBM152 2009a template.

The anatomy is real: the grey- and white-matter probability maps and the brain mask of the MNI ICBM152
2009a template that ships inside ``nilearn`` (CSF is taken as ``clip(mask - gm - wm, 0, 1)``). The contrasts
are physics: every tissue fraction ``F`` contributes to the spin-echo signal

    S = sum_tissue F * PD * (1 - exp(-TR / T1)) * exp(-TE / T2)

and FLAIR replaces the saturation term by the inversion-recovery term ``1 - 2 exp(-TI/T1) + exp(-TR/T1)``
(magnitude image). A "subject" is the template under a random smooth deformation with 0-3 tumour-like
lesions (necrotic core, enhancing rim, oedema; BraTS-like, with mass effect), per-subject relaxation-time
and sequence-parameter jitter, smooth fields that change T1, T2 and PD independently inside a tissue, a bias
field and Rician noise; the source contrast is also slightly misregistered to the target, as real pairs are.

What this shows and what it does not: the data have real anatomy, physically consistent contrast between
the four sequences and a mapping that needs spatial context (see :func:`pointwise_mapping_psnr`), so
they exercise a synthesis model end to end. They come from one template, so they say nothing about
generalisation across scanners, populations or real pathology.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from scipy import ndimage as ndi
from scipy.special import expit

__all__ = [
    "CONTRASTS",
    "TISSUES",
    "TISSUE_PROPERTIES",
    "SEQUENCES",
    "TEMPLATE_NAME",
    "Relaxation",
    "MRSequence",
    "SimulationSettings",
    "DEFAULT_SETTINGS",
    "MEAN_SUBJECT",
    "Template",
    "SimulatedSubject",
    "load_mni152",
    "load_template",
    "signal_equation",
    "simulate_subject",
    "robust_normalise",
    "pointwise_mapping_psnr",
    "pointwise_remap",
]

CONTRASTS = ("t1w", "t2w", "pdw", "flair")
TEMPLATE_NAME = "MNI ICBM152 2009a nonlinear symmetric (mni_icbm152_*_tal_nlin_sym_09a), as shipped in nilearn"

# ----------------------------------------------------------------------------------------------------------
# Tissue and sequence tables (1.5 T, times in ms, PD relative to water)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Relaxation:
    """Mean relaxation times (ms) and proton density (relative) of one tissue."""

    t1: float
    t2: float
    pd: float


TISSUES = ("wm", "gm", "csf", "necrosis", "enhancing", "oedema")
_NORMAL_TISSUES = 3  # the first three of TISSUES come from the template; the others are lesion compartments

#: The one table of tissue parameters. Normal tissue: typical 1.5 T literature values; with the T1w protocol
#: below they give the template T1's own contrast (WM/GM 1.34, CSF/WM 0.33), and the simulated T1w
#: correlates > 0.9 with the real template T1. Lesions (BraTS compartments): the necrotic core
#: is fluid-like but protein-rich (not fully nulled by FLAIR), the enhancing rim is cellular tumour with some
#: contrast uptake (T1 shortened towards WM), the oedema is vasogenic water in white matter (long T2, bright
#: in FLAIR, GM-like in T1w -- so T1w alone cannot tell it from grey matter).
TISSUE_PROPERTIES: Mapping[str, Relaxation] = MappingProxyType(
    {
        "wm": Relaxation(t1=600.0, t2=80.0, pd=0.70),
        "gm": Relaxation(t1=1100.0, t2=100.0, pd=0.80),
        "csf": Relaxation(t1=4000.0, t2=2000.0, pd=1.00),
        "necrosis": Relaxation(t1=2200.0, t2=600.0, pd=0.95),
        "enhancing": Relaxation(t1=750.0, t2=130.0, pd=0.85),
        "oedema": Relaxation(t1=1200.0, t2=250.0, pd=0.88),
    }
)


@dataclass(frozen=True)
class MRSequence:
    """Sequence timing (ms): spin echo when ``ti`` is None, else inversion recovery."""

    tr: float
    te: float
    ti: float | None = None


#: Clinical-style 1.5 T protocols. The FLAIR inversion time nulls CSF (T1 4000 ms) for this TR:
#: TI = T1 * (ln 2 - ln(1 + exp(-TR / T1))) ~ 2400 ms.
SEQUENCES: Mapping[str, MRSequence] = MappingProxyType(
    {
        "t1w": MRSequence(tr=450.0, te=10.0),
        "t2w": MRSequence(tr=4000.0, te=100.0),
        "pdw": MRSequence(tr=4000.0, te=15.0),
        "flair": MRSequence(tr=9000.0, te=120.0, ti=2400.0),
    }
)


@dataclass(frozen=True)
class SimulationSettings:
    """How much subjects vary; every amplitude of the simulation in one place.

    Lengths are in mm, angles in degrees, ``*_log_std`` are standard deviations of log-multipliers.
    """

    # anatomy: smooth random deformation of the template (inter-subject shape differences after MNI alignment)
    deformation_std_mm: float = 1.2
    deformation_correlation_mm: float = 30.0
    max_displacement_mm: float = 8.0
    # lesions (BraTS-like); radius of the tumour (enhancing outer edge), ratios relative to it
    max_lesions: int = 3
    tumour_radius_mm: tuple[float, float] = (4.0, 12.0)
    necrosis_ratio: tuple[float, float] = (0.0, 0.7)
    oedema_ratio: tuple[float, float] = (1.3, 2.0)
    mass_effect: tuple[float, float] = (0.15, 0.45)  # fractional radial push at the lesion centre (< 1)
    lesion_min_depth_mm: float = 20.0  # lesion centres this deep inside the brain, in white matter
    lesion_edge_mm: float = 1.0
    lesion_irregularity: float = 0.15  # log-std of the radial boundary perturbation
    oedema_irregularity: float = 0.3
    lesion_irregularity_correlation_mm: float = 8.0
    # tissue properties: per-subject jitter of each tissue's mean, and smooth within-tissue fields
    relaxation_log_std: float = 0.05
    pd_log_std: float = 0.03
    regional_log_std: tuple[float, float, float] = (0.04, 0.06, 0.02)  # (T1, T2, PD), anatomy-bound
    subject_log_std: tuple[float, float, float] = (0.02, 0.03, 0.01)  # (T1, T2, PD), this subject only
    field_correlation_mm: float = 12.0
    # acquisition
    sequence_jitter: float = 0.08  # relative, uniform, for TR and TE
    inversion_jitter: float = 0.03  # relative, uniform, for TI (keeps CSF near the null)
    misregistration_mm: float = 0.3  # rigid translation std per axis between source and target
    misregistration_deg: float = 0.3  # rigid rotation std per axis (residual of a good registration)
    bias_log_std: float = 0.04  # shared by a subject's contrasts (receive coil; residual after correction)
    contrast_bias_log_std: float = 0.01  # each contrast's own part
    bias_correlation_mm: float = 80.0
    noise_fraction: tuple[float, float] = (0.01, 0.02)  # Rician sigma relative to the 99th signal percentile
    intensity_scale: float = 2000.0  # arbitrary scanner units (integers; white matter T1w ~ 650)


DEFAULT_SETTINGS = SimulationSettings()

#: The template itself: no deformation, lesions, jitter, fields, misregistration, bias or noise.
MEAN_SUBJECT = SimulationSettings(
    deformation_std_mm=0.0,
    max_lesions=0,
    relaxation_log_std=0.0,
    pd_log_std=0.0,
    regional_log_std=(0.0, 0.0, 0.0),
    subject_log_std=(0.0, 0.0, 0.0),
    sequence_jitter=0.0,
    inversion_jitter=0.0,
    misregistration_mm=0.0,
    misregistration_deg=0.0,
    bias_log_std=0.0,
    contrast_bias_log_std=0.0,
    noise_fraction=(0.0, 0.0),
)

# fixed seed of the anatomy-bound (regional) property fields: the same for every subject and dataset, so a
# model can learn them from anatomical context, unlike the per-subject fields
_REGIONAL_FIELD_SEED = 20090152
# random streams of one subject: anatomy first, then one per contrast (so a contrast's noise and sequence
# jitter do not depend on which other contrast it is paired with)
_ANATOMY_STREAM = 0
_MISREGISTRATION_STREAM = 1
_CONTRAST_STREAM = 2
_NOISE_REFERENCE_PERCENTILE = 99.0
_BRAIN_MASK_THRESHOLD = 0.2  # nilearn's load_mni152_brain_mask threshold on the rescaled template T1
_MISREGISTRATION_REACH = 4.0  # the crop leaves room for rigid shifts of this many standard deviations
_NEGLIGIBLE = 1e-3  # tissue fraction treated as none
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


# ----------------------------------------------------------------------------------------------------------
# Template
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """The MNI anatomy prepared for one output spacing.

    Attributes:
        spacing: output voxel size (mm).
        step: output voxel size in template voxels (output voxel ``i`` lies on template voxel ``i * step``).
        shape: output grid shape.
        affine: output RAS affine (template affine with voxel size ``spacing``, same first voxel centre).
        maps: 1 mm tissue maps ``wm``, ``gm``, ``csf``, ``mask`` blurred by the output PSF (FWHM = spacing).
        t1_reference: the real template T1 on the output grid (same PSF), for checks.
        regional_fields: (3, *crop) anatomy-bound log-fields for T1, T2, PD (unit std, template frame); the
            same for every subject, so a model can learn them from anatomical context.
        crop: output-grid box holding ``region`` plus the misregistration; work is done inside it.
        region: boolean mask on the crop: where tissue can land after the largest displacement. Tissue maps
            are sampled and signals computed only there (the rest of the grid is background).
        region_points: (3, n) output-grid coordinates of the ``region`` voxels, float32.
        lesion_sites: (N, 3) output voxels deep in white matter where lesion centres may lie.
    """

    spacing: float
    step: float
    shape: tuple[int, int, int]
    affine: np.ndarray
    maps: Mapping[str, np.ndarray]
    t1_reference: np.ndarray
    regional_fields: np.ndarray
    crop: tuple[slice, slice, slice]
    region: np.ndarray
    region_points: np.ndarray
    lesion_sites: np.ndarray = field(repr=False)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False  # shared through the cache: nobody may modify it
    return array


_MNI152_LOADERS = {
    "t1": "load_mni152_template",
    "gm": "load_mni152_gm_template",
    "wm": "load_mni152_wm_template",
    "mask": "load_mni152_brain_mask",
}


@functools.lru_cache(maxsize=8)
def load_mni152(kind: str = "t1", resolution: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One image of the MNI ICBM152 2009a template shipped inside ``nilearn``, loaded once per process.

    The one place that reads the template: the simulation, the DICOM throughput benchmark and the DICOM test
    fixtures take their anatomy from here.

    Args:
        kind: ``"t1"`` (the T1 template), ``"gm"`` or ``"wm"`` (tissue probability maps), ``"mask"`` (nilearn's
            brain mask, 0/1).
        resolution: voxel size in mm as nilearn offers it (1 or 2).

    Returns:
        the image (float32, read-only) and its RAS affine (float64, read-only).
    """
    if kind not in _MNI152_LOADERS:
        raise ValueError(f"kind={kind!r} is not a template image; choose one of {tuple(_MNI152_LOADERS)}.")
    from nilearn import datasets  # imported here: only generation needs nilearn

    img = getattr(datasets, _MNI152_LOADERS[kind])(resolution=resolution)
    return _read_only(np.asarray(img.get_fdata(dtype=np.float32))), _read_only(np.asarray(img.affine, np.float64))


@functools.lru_cache(maxsize=2)
def _template_1mm() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The template's affine and its T1, GM, WM, CSF and mask at 1 mm (float32), loaded once per process."""
    (t1, affine), (gm, _), (wm, _) = (load_mni152(kind, 1) for kind in ("t1", "gm", "wm"))
    # the same rule as nilearn.datasets.load_mni152_brain_mask, without reloading the template
    mask = (t1 > _BRAIN_MASK_THRESHOLD).astype(np.float32)
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    return affine, {"t1": t1, "gm": gm, "wm": wm, "csf": csf, "mask": mask}


@functools.lru_cache(maxsize=4)
def load_template(spacing: float = 2.0, settings: SimulationSettings = DEFAULT_SETTINGS) -> Template:
    """Prepare the MNI ICBM152 anatomy for output voxel size ``spacing`` (cached per spacing and settings).

    Args:
        spacing: output voxel size in mm (> 0).
        settings: simulation settings (the crop margin and lesion sites depend on them).
    """
    if not np.isfinite(spacing) or spacing <= 0:
        raise ValueError(f"spacing={spacing!r} must be a positive number of mm.")
    affine_1mm, maps_1mm = _template_1mm()
    voxel_mm = float(np.sqrt((affine_1mm[:3, :3] ** 2).sum(0)).mean())
    step = spacing / voxel_mm  # output voxel i lies on template voxel i * step
    shape = tuple(int(np.floor((n - 1) / step)) + 1 for n in maps_1mm["t1"].shape)
    affine = affine_1mm @ np.diag([step, step, step, 1.0])

    # partial-volume blur: a Gaussian point-spread function whose FWHM is the output voxel size
    sigma = step / _FWHM_PER_SIGMA
    maps = {k: _read_only(ndi.gaussian_filter(v, sigma)) for k, v in maps_1mm.items()}
    grid = np.indices(shape, dtype=np.float32) * np.float32(step)
    t1_reference = ndi.map_coordinates(maps.pop("t1"), grid, order=1)

    mask = ndi.map_coordinates(maps["mask"], grid, order=1) >= 0.5
    wm = ndi.map_coordinates(maps["wm"], grid, order=1)
    depth_mm = ndi.distance_transform_edt(mask) * spacing
    lesion_sites = np.argwhere((wm > 0.8) & (depth_mm >= settings.lesion_min_depth_mm))
    if len(lesion_sites) == 0:  # very coarse grids: fall back to any white matter
        lesion_sites = np.argwhere(wm > 0.5)

    # tissue reaches at most max_displacement_mm beyond the (blurred) template brain
    reach = settings.max_displacement_mm / spacing + 1
    region = ndi.distance_transform_edt(ndi.map_coordinates(maps["mask"], grid, order=1) <= _NEGLIGIBLE) <= reach
    margin = int(np.ceil(settings.misregistration_mm * _MISREGISTRATION_REACH / spacing)) + 1
    occupied = np.argwhere(region)
    low = np.maximum(occupied.min(0) - margin, 0)
    high = np.minimum(occupied.max(0) + margin + 1, shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(low, high))

    rng = np.random.default_rng(_REGIONAL_FIELD_SEED)
    regional = _smooth_fields(rng, shape, settings.field_correlation_mm / spacing, 3)
    return Template(
        spacing=float(spacing),
        step=float(step),
        shape=shape,
        affine=_read_only(affine),
        maps=MappingProxyType(maps),
        t1_reference=_read_only(t1_reference),
        regional_fields=_read_only(np.ascontiguousarray(regional[(slice(None), *crop)])),
        crop=crop,
        region=_read_only(region[crop]),
        region_points=_read_only((np.stack(np.nonzero(region[crop])) + low[:, None]).astype(np.float32)),
        lesion_sites=_read_only(lesion_sites),
    )


# ----------------------------------------------------------------------------------------------------------
# Physics
# ----------------------------------------------------------------------------------------------------------


def signal_equation(sequence: MRSequence, t1: np.ndarray, t2: np.ndarray, pd: np.ndarray) -> np.ndarray:
    """Signed signal of one tissue; spin echo, or inversion recovery when ``sequence.ti`` is set.

    Args:
        sequence: TR, TE (and TI) in ms.
        t1: T1 (ms), any shape broadcastable with ``t2`` and ``pd``.
        t2: T2 (ms).
        pd: proton density (relative).
    """
    recovery = np.exp(-sequence.tr / t1)
    if sequence.ti is None:
        longitudinal = 1.0 - recovery
    else:  # signed: partial volumes of tissues either side of the null cancel, as in real magnitude FLAIR
        longitudinal = 1.0 - 2.0 * np.exp(-sequence.ti / t1) + recovery
    return pd * longitudinal * np.exp(-sequence.te / t2)


# ----------------------------------------------------------------------------------------------------------
# Random smooth fields and lesions
# ----------------------------------------------------------------------------------------------------------


def _upsample_linear(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Separable linear up-sampling of the last three axes to ``shape`` (voxel centres aligned, edges clamped).

    Much faster than ``scipy.ndimage.zoom`` here because each axis is one gather and one blend.
    """
    for axis, size in zip(range(-3, 0), shape):
        n_in = array.shape[axis]
        position = np.clip((np.arange(size, dtype=np.float32) + 0.5) * (n_in / size) - 0.5, 0, n_in - 1)
        low = np.floor(position).astype(np.intp)
        high = np.minimum(low + 1, n_in - 1)
        weight = (position - low).reshape((-1,) + (1,) * (-axis - 1))
        array = np.take(array, low, axis=axis) * (1 - weight) + np.take(array, high, axis=axis) * weight
    return array


def _smooth_fields(rng: np.random.Generator, shape: Sequence[int], correlation: float, count: int) -> np.ndarray:
    """``count`` smooth random fields of unit standard deviation, (count, *shape) float32.

    White noise on a coarse grid (knots half a correlation length apart), smoothed there and linearly
    up-sampled: cheap, and smooth at the scale that matters.

    Args:
        rng: random generator.
        shape: output shape.
        correlation: correlation length in output voxels.
        count: number of independent fields.
    """
    knot = max(correlation / 2.0, 1.0)
    coarse = tuple(int(np.ceil(n / knot)) + 2 for n in shape)
    noise = rng.standard_normal((count, *coarse), dtype=np.float32)
    noise = ndi.gaussian_filter(noise, (0, 1.0, 1.0, 1.0), mode="wrap")
    noise /= noise.reshape(count, -1).std(1).reshape(count, 1, 1, 1) + np.float32(1e-6)
    return _upsample_linear(noise, shape)


@dataclass(frozen=True)
class _Lesion:
    centre: np.ndarray  # output voxel coordinates (absolute)
    radius_mm: float
    necrosis_ratio: float
    oedema_ratio: float
    mass_effect: float


def _draw_lesions(rng: np.random.Generator, template: Template, settings: SimulationSettings) -> list[_Lesion]:
    count = int(rng.integers(0, settings.max_lesions + 1)) if len(template.lesion_sites) else 0
    lesions = []
    for _ in range(count):
        site = template.lesion_sites[rng.integers(len(template.lesion_sites))]
        jitter = rng.uniform(-0.5, 0.5, 3)  # off the voxel grid
        lesions.append(
            _Lesion(
                centre=site + jitter,
                radius_mm=float(rng.uniform(*settings.tumour_radius_mm)),
                necrosis_ratio=float(rng.uniform(*settings.necrosis_ratio)),
                oedema_ratio=float(rng.uniform(*settings.oedema_ratio)),
                mass_effect=float(rng.uniform(*settings.mass_effect)),
            )
        )
    return lesions


def _lesion_box(lesion: _Lesion, reach_mm: float, spacing: float, origin: np.ndarray, shape: Sequence[int]):
    """Slices of the crop around a lesion, and the box's voxel offsets from the lesion centre (3, *box)."""
    centre = lesion.centre - origin
    half = reach_mm / spacing + 1
    low = np.clip(np.floor(centre - half).astype(int), 0, shape)
    high = np.clip(np.ceil(centre + half).astype(int) + 1, 0, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    offsets = np.indices(high - low, dtype=np.float32) + (low - centre).astype(np.float32).reshape(3, 1, 1, 1)
    return box, offsets


def _add_mass_effect(displacement, lesions, spacing, origin) -> None:
    """Push tissue radially away from each lesion: the backward map samples the template closer to the centre."""
    for lesion in lesions:
        width = lesion.radius_mm * lesion.oedema_ratio / spacing  # Gaussian width in voxels
        box, offsets = _lesion_box(lesion, 3 * width * spacing, spacing, origin, displacement.shape[1:])
        weight = lesion.mass_effect * np.exp(-(offsets**2).sum(0) / (2 * width**2))
        displacement[(slice(None), *box)] -= offsets * weight


def _insert_lesions(fractions, lesions, rng, settings, spacing, origin) -> None:
    """Replace normal tissue by necrosis, enhancing rim and oedema inside each lesion (in place).

    Tumour tissue (necrosis, rim) displaces every tissue; oedema soaks white matter fully and grey matter
    half, never CSF. Fractions keep summing to the brain fraction.
    """
    index = {name: i for i, name in enumerate(TISSUES)}
    edge = settings.lesion_edge_mm
    for lesion in lesions:
        reach = lesion.radius_mm * lesion.oedema_ratio * np.exp(3 * settings.oedema_irregularity) + 3 * edge
        box, offsets = _lesion_box(lesion, reach, spacing, origin, fractions.shape[1:])
        if min(s.stop - s.start for s in box) <= 0:
            continue
        distance = np.sqrt((offsets**2).sum(0)) * np.float32(spacing)  # mm
        wobble = _smooth_fields(rng, distance.shape, settings.lesion_irregularity_correlation_mm / spacing, 2)
        tumour_distance = distance * np.exp(settings.lesion_irregularity * wobble[0])
        oedema_distance = distance * np.exp(settings.oedema_irregularity * wobble[1])
        tumour = expit((lesion.radius_mm - tumour_distance) / edge)
        necrosis = expit((lesion.radius_mm * lesion.necrosis_ratio - tumour_distance) / edge)
        if lesion.necrosis_ratio * lesion.radius_mm < edge:  # a solid tumour without necrotic core
            necrosis = np.zeros_like(tumour)
        oedema = np.clip(expit((lesion.radius_mm * lesion.oedema_ratio - oedema_distance) / edge) - tumour, 0, 1)

        part = fractions[(slice(None), *box)]  # view: edits land in ``fractions``
        brain = part.sum(0)
        part *= 1.0 - tumour
        part[index["necrosis"]] += necrosis * brain
        part[index["enhancing"]] += (tumour - necrosis) * brain
        soaked_wm = oedema * part[index["wm"]]
        soaked_gm = 0.5 * oedema * part[index["gm"]]
        part[index["wm"]] -= soaked_wm
        part[index["gm"]] -= soaked_gm
        part[index["oedema"]] += soaked_wm + soaked_gm


# ----------------------------------------------------------------------------------------------------------
# One subject
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatedSubject:
    """One simulated pair on the template's output grid.

    Attributes:
        source: source contrast, float32, slightly misregistered to the target.
        target: target contrast, float32.
        mask: brain mask on the target's pose, uint8.
        lesion: lesion mask on the target's pose (necrosis, enhancing rim and oedema together >= 0.5), uint8.
        num_lesions: number of lesions inserted.
    """

    source: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    lesion: np.ndarray
    num_lesions: int


def _rigid_resample(
    image: np.ndarray, points: np.ndarray, rng: np.random.Generator, settings: SimulationSettings, spacing: float
) -> np.ndarray:
    """Values of ``image`` at ``points`` (3, n) after a small random rigid motion about the image centre.

    This is the source/target misregistration; only the voxels where tissue can be are resampled.
    """
    angles = np.deg2rad(rng.normal(0.0, settings.misregistration_deg, 3))
    shift = rng.normal(0.0, settings.misregistration_mm, 3) / spacing
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rotation = (
        np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    )
    centre = (np.asarray(image.shape) - 1) / 2.0
    moved = (rotation @ (points - centre[:, None]) + (centre + shift)[:, None]).astype(np.float32)
    return ndi.map_coordinates(image, moved, order=1, mode="constant", cval=0.0)


def _contrast_signal(
    contrast: str,
    fractions: np.ndarray,
    means: np.ndarray,
    fields: np.ndarray,
    rng: np.random.Generator,
    settings: SimulationSettings,
) -> np.ndarray:
    """Noise-free magnitude signal of one contrast with jittered sequence timing.

    Args:
        contrast: one of :data:`CONTRASTS`.
        fractions: (tissues, n) tissue fractions.
        means: (3, tissues) the subject's T1, T2, PD per tissue.
        fields: (3, n) multiplicative T1, T2, PD fields.
        rng: the contrast's random generator.
        settings: variability of the simulation.
    """
    base = SEQUENCES[contrast]
    tr, te = np.array([base.tr, base.te]) * (1.0 + rng.uniform(-settings.sequence_jitter, settings.sequence_jitter, 2))
    ti_jitter = 1.0 + rng.uniform(-settings.inversion_jitter, settings.inversion_jitter)
    sequence = MRSequence(tr=float(tr), te=float(te), ti=None if base.ti is None else base.ti * ti_jitter)
    signal = np.zeros(fractions.shape[1:], dtype=np.float32)
    for k, fraction in enumerate(fractions):
        if k < _NORMAL_TISSUES:  # present almost everywhere: no indexing
            signal += fraction * signal_equation(sequence, *(means[:, k, None] * fields))
            continue
        where = np.flatnonzero(fraction)  # lesion tissues occupy few voxels, often none
        if where.size:
            t1, t2, pd = means[:, k, None] * fields[:, where]
            signal[where] += fraction[where] * signal_equation(sequence, t1, t2, pd)
    return np.abs(signal)


def _acquire(signal: np.ndarray, bias: np.ndarray, template: Template, rng, settings) -> np.ndarray:
    """Bias field and Rician noise on the full grid, in scanner units.

    Args:
        signal: noise-free signal on the crop.
        bias: the subject's log bias field on the crop (shared by its contrasts: the same receive coil).
        template: the prepared template.
        rng: the contrast's random generator.
        settings: variability of the simulation.
    """
    own = _smooth_fields(rng, signal.shape, settings.bias_correlation_mm / template.spacing, 1)[0]
    clean = np.zeros(template.shape, dtype=np.float32)
    log_bias = bias + settings.contrast_bias_log_std * own
    clean[template.crop] = signal * np.exp(log_bias) * np.float32(settings.intensity_scale)
    reference = np.percentile(clean[template.crop], _NOISE_REFERENCE_PERCENTILE)
    sigma = np.float32(rng.uniform(*settings.noise_fraction) * reference)
    real = clean + sigma * rng.standard_normal(template.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(template.shape, dtype=np.float32)
    magnitude = np.sqrt(real * real + imaginary * imaginary)  # magnitude of complex Gaussian noise: Rician
    return np.round(magnitude, out=magnitude)  # integer scanner units, as scanners store them


def simulate_subject(
    template: Template,
    seed: Sequence[int],
    source: str = "t1w",
    target: str = "t2w",
    settings: SimulationSettings = DEFAULT_SETTINGS,
) -> SimulatedSubject:
    """Simulate one paired subject.

    The anatomy (deformation, lesions, tissue properties, common bias, misregistration) depends only on
    ``seed``; each contrast's sequence jitter, own bias and noise only on ``seed`` and that contrast.

    Args:
        template: from :func:`load_template`.
        seed: non-negative integers, e.g. ``(dataset_seed, split, index)``.
        source: source contrast, one of :data:`CONTRASTS`.
        target: target contrast, one of :data:`CONTRASTS`.
        settings: variability of the simulation.
    """
    for name, value in (("source", source), ("target", target)):
        if value not in CONTRASTS:
            raise ValueError(f"{name}={value!r} is not a known contrast; choose one of {CONTRASTS}.")
    seed = tuple(int(s) for s in seed)
    rng = np.random.default_rng([*seed, _ANATOMY_STREAM])
    spacing = template.spacing
    origin = np.array([s.start for s in template.crop], dtype=np.float32)
    crop_shape = tuple(s.stop - s.start for s in template.crop)
    limit = settings.max_displacement_mm / spacing

    # backward map from the subject to the template (output voxels): smooth deformation plus mass effect
    displacement = _smooth_fields(rng, crop_shape, settings.deformation_correlation_mm / spacing, 3)
    displacement *= np.float32(settings.deformation_std_mm / spacing)
    lesions = _draw_lesions(rng, template, settings)
    _add_mass_effect(displacement, lesions, spacing, origin)
    np.clip(displacement, -limit, limit, out=displacement)  # keeps tissue inside ``template.region``
    region = template.region
    coordinates = displacement[:, region] + template.region_points
    del displacement

    # warped anatomy, sampled only where tissue can land
    coordinates *= np.float32(template.step)  # output voxels -> 1 mm template voxels
    wm, gm, brain = (ndi.map_coordinates(template.maps[k], coordinates, order=1) for k in ("wm", "gm", "mask"))
    fractions = np.zeros((len(TISSUES), *crop_shape), dtype=np.float32)
    fractions[:3, region] = np.stack([wm, gm, np.clip(brain - gm - wm, 0.0, 1.0)])
    mask = np.zeros(template.shape, dtype=np.uint8)
    mask[template.crop][region] = brain >= 0.5
    _insert_lesions(fractions, lesions, rng, settings, spacing, origin)
    lesion = np.zeros(template.shape, dtype=np.uint8)
    lesion[template.crop] = fractions[_NORMAL_TISSUES:].sum(axis=0) >= 0.5

    # tissue properties where there is tissue: per-subject tissue means times smooth fields, independent for
    # T1, T2 and PD (so T2 is no function of T1 inside a tissue)
    tissue = fractions.any(axis=0)
    fractions = fractions[:, tissue]  # (tissues, n)
    log_jitter = rng.normal(0.0, 1.0, (3, len(TISSUES))) * np.array(
        [[settings.relaxation_log_std], [settings.relaxation_log_std], [settings.pd_log_std]]
    )
    table = np.array([[getattr(TISSUE_PROPERTIES[t], q) for t in TISSUES] for q in ("t1", "t2", "pd")])
    means = (table * np.exp(log_jitter)).astype(np.float32)  # (3 quantities, tissues)
    own_fields = _smooth_fields(rng, crop_shape, settings.field_correlation_mm / spacing, 3)[:, tissue]
    # the regional fields stay in the template frame: the deformation is small against their correlation
    # length, so warping them (three more interpolations per subject) would change nothing visible
    log_fields = (
        np.asarray(settings.regional_log_std, np.float32)[:, None] * template.regional_fields[:, tissue]
        + np.asarray(settings.subject_log_std, np.float32)[:, None] * own_fields
    )
    fields = np.exp(log_fields)  # (3, n)
    bias = settings.bias_log_std * _smooth_fields(rng, crop_shape, settings.bias_correlation_mm / spacing, 1)[0]
    misregistration_rng = np.random.default_rng([*seed, _MISREGISTRATION_STREAM])

    images = {}
    for role, contrast in (("source", source), ("target", target)):
        contrast_rng = np.random.default_rng([*seed, _CONTRAST_STREAM + CONTRASTS.index(contrast)])
        signal = np.zeros(crop_shape, dtype=np.float32)
        signal[tissue] = _contrast_signal(contrast, fractions, means, fields, contrast_rng, settings)
        if role == "source":  # the target defines the pose; the source is a separate, slightly moved scan
            points = template.region_points - origin[:, None]  # crop coordinates
            moved = _rigid_resample(signal, points, misregistration_rng, settings, spacing)
            signal = np.zeros(crop_shape, dtype=np.float32)
            signal[region] = moved
        images[role] = _acquire(signal, bias, template, contrast_rng, settings)
    return SimulatedSubject(images["source"], images["target"], mask, lesion, len(lesions))


# ----------------------------------------------------------------------------------------------------------
# How much spatial context the task needs
# ----------------------------------------------------------------------------------------------------------


def robust_normalise(image: np.ndarray, lower: float = 0.5, upper: float = 99.5, clip: bool = True) -> np.ndarray:
    """Map the image's ``lower``/``upper`` intensity percentiles to -1/+1, as the bundle's MR normalisation does.

    Args:
        image: any array.
        lower: percentile mapped to -1.
        upper: percentile mapped to +1.
        clip: clip the result to [-1, 1].
    """
    low, high = np.percentile(image, (lower, upper))
    scaled = 2.0 * (np.asarray(image, dtype=np.float64) - low) / max(high - low, np.finfo(np.float32).eps) - 1.0
    return np.clip(scaled, -1.0, 1.0) if clip else scaled


def pointwise_remap(source, target, fit=None, bins: int = 256) -> np.ndarray:
    """The best pointwise intensity mapping source -> target, applied to ``source``.

    The mapping is the conditional mean of ``target`` per source bin (``bins`` equal bins over [-1, 1]; values
    outside go to the end bins), fitted on the voxels where ``fit`` is non-zero (all voxels when None): the
    least-squares optimum among functions of one voxel's intensity, at that bin resolution. Both the
    simulation's check (:func:`pointwise_mapping_psnr`) and the benchmark's ``oracle_remap`` row use it.

    Args:
        source: source intensities in [-1, 1] (array or tensor, any shape).
        target: target intensities, same shape.
        fit: voxels to fit the mapping on (non-zero = used), same shape; None for all.
        bins: number of source bins.

    Returns:
        float64 array of ``source``'s shape: the mapping's value at every source voxel (0 in bins with no fitted
        voxel).
    """
    s, t = (np.asarray(v, dtype=np.float64) for v in (source, target))
    index = np.clip(((s + 1.0) / 2.0 * bins).astype(int), 0, bins - 1)
    used = np.ones(s.shape, bool) if fit is None else np.asarray(fit) > 0
    counts = np.bincount(index[used], minlength=bins)
    means = np.bincount(index[used], weights=t[used], minlength=bins) / np.maximum(counts, 1)
    return means[index]


def pointwise_mapping_psnr(source: np.ndarray, target: np.ndarray, mask: np.ndarray, bins: int = 256) -> float:
    """PSNR (dB, data range 2) inside ``mask`` of the best pointwise intensity mapping source -> target.

    The mapping (:func:`pointwise_remap`) is the conditional mean of the normalised target given the finely binned
    normalised source, fitted on these very images: an upper bound for any method that looks at one voxel at a
    time. A task where this stays far below a good model's PSNR needs spatial context.

    Args:
        source: source image.
        target: target image, same shape.
        mask: region to fit and score (non-zero = inside).
        bins: number of source intensity bins over [-1, 1].
    """
    from ..metrics import masked_psnr  # imported here: the metrics need torch, the simulation does not

    inside = np.asarray(mask) > 0
    s = robust_normalise(source)[inside]
    t = robust_normalise(target)[inside]
    return masked_psnr(pointwise_remap(s, t, bins=bins), t)

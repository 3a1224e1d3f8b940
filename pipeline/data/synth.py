"""Data for training on the synthetic-head generator (``transforms.synth``): tissue maps, items, validation volumes.

:func:`load_tissue_maps` reads the MNI ICBM152 2009 tissue probability maps that the installed ``nilearn`` package
ships (grey matter, white matter, brain mask; CSF = mask - GM - WM; :func:`pipeline.data.cohort.load_template`, nothing
downloaded), pads them with ``margin_mm`` of air so skull, scalp and background fit, adds the distance from the brain
outward (``scipy.ndimage.distance_transform_edt``), and returns the ``(4, X, Y, Z)`` stack of
:data:`transforms.synth.TISSUE_CHANNELS` as a MetaTensor with its MNI affine. :func:`phantom_tissue_maps` builds a
small stack of nested ellipsoids for tests and smoke runs.

:func:`synth_items` makes the items a training epoch iterates over (each one holds the *same* stack; the chain draws
a new head from it every time), :func:`synth_volumes` a fixed set of whole generated volumes (seeded, so every run
validates on the same ones), :func:`synth_splits` the split record the bundle writes for them, and
:class:`IdentityLossCheck` the warning when training on a generator does not leave the identity's loss level (the
failure seen in ``/work/shared/reference/generalisation-probe.md``: a generator whose patches a network cannot learn
from looks like a loss that stays at ``L1(noisy, clean)``).

Real scans that packages ship are never read here: they are for evaluation only.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from scipy import ndimage

from pipeline.data.splits import SubjectSplits
from transforms.synth import TISSUE_CHANNELS, synth_transforms

__all__ = [
    "IdentityLossCheck",
    "load_tissue_maps",
    "phantom_tissue_maps",
    "synth_items",
    "synth_splits",
    "synth_volumes",
]

logger = logging.getLogger(__name__)

TRAIN_SUBJECT = "synth-generator"
"""The one "subject" every training item stands for (the generator), recorded in the run's split."""


def _stack(gm: np.ndarray, wm: np.ndarray, csf: np.ndarray, affine: np.ndarray, spacing: float) -> MetaTensor:
    brain = (gm + wm + csf) >= 0.5
    distance = ndimage.distance_transform_edt(~brain).astype(np.float32) * float(spacing)
    data = np.stack([gm, wm, csf, distance]).astype(np.float32)
    meta = {"channels": list(TISSUE_CHANNELS), "filename_or_obj": "tissue_maps"}
    return MetaTensor(torch.from_numpy(data), affine=torch.as_tensor(affine, dtype=torch.float64), meta=meta)


@functools.cache
def load_tissue_maps(margin_mm: float = 16.0, spacing: float = 1.0) -> MetaTensor:
    """The template's tissue stack ``(4, X, Y, Z)`` for :func:`transforms.synth.synth_transforms` (cached).

    Args:
        margin_mm: air added on every side of the template's crop (brain + 12 mm), for skull, scalp and background.
        spacing: voxel size of the stack in mm (``>= 1``; 1 is the template's; larger is block-averaged, for quick
            runs).

    Returns:
        A read-only-by-convention MetaTensor (float32, channels :data:`~transforms.synth.TISSUE_CHANNELS`, MNI
        affine); the transforms never write into it.

    Raises:
        ValueError: ``margin_mm`` negative or ``spacing`` below 1.
    """
    if not 0 <= margin_mm <= 100:
        raise ValueError(f"margin_mm must be in [0, 100], got {margin_mm}")
    if not 1 <= spacing <= 8:
        raise ValueError(f"spacing must be in [1, 8] mm, got {spacing}")
    from pipeline.data.cohort import load_template

    template = load_template()
    pad = int(round(margin_mm))
    maps = [np.pad(np.asarray(getattr(template, name)), pad) for name in ("gm", "wm", "csf")]
    affine = np.asarray(template.affine, dtype=np.float64).copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)
    factor = int(round(spacing))
    if factor > 1:
        shape = [n // factor * factor for n in maps[0].shape]
        maps = [
            m[: shape[0], : shape[1], : shape[2]]
            .reshape(shape[0] // factor, factor, shape[1] // factor, factor, shape[2] // factor, factor)
            .mean(axis=(1, 3, 5))
            for m in maps
        ]
        affine[:3, 3] += affine[:3, :3] @ np.full(3, (factor - 1) / 2)
        affine[:3, :3] *= factor
    stack = _stack(*maps, affine=affine, spacing=float(factor))
    logger.info("tissue maps: %s voxels of %g mm (MNI152 2009, nilearn)", "x".join(map(str, stack.shape[1:])), factor)
    return stack


def phantom_tissue_maps(shape: Sequence[int] = (40, 40, 40), spacing: float = 1.0) -> MetaTensor:
    """A small tissue stack of nested ellipsoids (white matter in grey matter, ventricles and a CSF rim), for tests.

    Args:
        shape: grid size ``(X, Y, Z)``; the brain fills about 60 % of each axis.
        spacing: voxel size in mm.

    Returns:
        The ``(4, X, Y, Z)`` stack (:data:`~transforms.synth.TISSUE_CHANNELS`) with a ``diag(spacing)`` affine.
    """
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, int(n)) for n in shape], indexing="ij"))
    r = np.sqrt(((grid / np.array([0.6, 0.65, 0.55])[:, None, None, None]) ** 2).sum(0))
    ventricles = np.sqrt(((grid / np.array([0.12, 0.25, 0.1])[:, None, None, None]) ** 2).sum(0))

    def soft(x: np.ndarray, edge: float) -> np.ndarray:
        return 1.0 / (1.0 + np.exp((x - edge) / 0.03))

    brain, inner = soft(r, 1.0), soft(r, 0.92)
    wm = soft(r, 0.7) * (1.0 - soft(ventricles, 1.0))
    csf = (brain - inner) + soft(ventricles, 1.0) * soft(r, 0.7)
    gm = np.clip(brain - wm - csf, 0.0, 1.0)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    return _stack(gm.astype(np.float32), wm.astype(np.float32), csf.astype(np.float32), affine, spacing)


def synth_items(maps: MetaTensor, n: int, key: str = "label") -> list[dict[str, Any]]:
    """``n`` training items, each holding the same tissue stack (the generator draws a new head per item and epoch).

    Args:
        maps: the tissue stack (:func:`load_tissue_maps`).
        n: items per epoch, ``>= 1``.
        key: the key the chain reads the stack from.

    Returns:
        ``[{key: maps, "subject": "synth-generator"}, ...]``.

    Raises:
        ValueError: ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [{key: maps, "subject": TRAIN_SUBJECT} for _ in range(int(n))]


def synth_volumes(
    maps: MetaTensor,
    n: int = 2,
    seed: int = 1000,
    voxel_size: float = 2.0,
    noise: str = "gaussian",
    level: float = 15.0,
    divisible_k: int = 8,
    **generator: Any,
) -> list[dict[str, Any]]:
    """A fixed set of whole generated volumes with one noise type and level (validation and held-out evaluation).

    Each volume is the chain of :func:`transforms.synth.synth_transforms` with ``patch_size=None`` (the whole
    field of view), the given isotropic ``voxel_size``, and only ``noise`` at ``level``; volume ``k`` is drawn from
    seed ``seed + k``, so the set is the same in every run. Volumes are cropped to a multiple of ``divisible_k``.

    Args:
        maps: the tissue stack.
        n: number of volumes.
        seed: seed of the first volume.
        voxel_size: voxel size in mm.
        noise: ``"gaussian"``, ``"rician"`` or ``"poisson"``.
        level: its level (0-255 scale for Gaussian/Rician, photon count for Poisson).
        divisible_k: crop every side to a multiple of this (a U-Net's total stride).
        **generator: further :func:`~transforms.synth.synth_transforms` arguments (contrasts, head_prob, ...).

    Returns:
        ``[{"image", "label", "mask": MetaTensor (1, X, Y, Z), "subject": "synth-val-<k>"}, ...]``.

    Raises:
        ValueError: unknown ``noise`` or ``n < 1``.
    """
    if noise not in ("gaussian", "rician", "poisson"):
        raise ValueError(f"noise must be 'gaussian', 'rician' or 'poisson', got {noise!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    levels = {kind: (level if kind == noise else None) for kind in ("gaussian", "rician", "poisson")}
    options = {"anisotropic_prob": 0.0, "flip_prob": 0.0, **generator, **levels}
    out = []
    for k in range(int(n)):
        chain = synth_transforms(patch_size=None, voxel_size=float(voxel_size), seed=int(seed) + k, **options)
        item = chain({"label": maps})
        box = [slice(0, s // divisible_k * divisible_k) for s in item["label"].shape[1:]]
        volume = {key: item[key][(slice(None), *box)] for key in ("image", "label", "mask")}
        out.append({**volume, "subject": f"synth-val-{k}"})
    return out


def synth_splits(val_items: Sequence[Mapping[str, Any]], seed: int = 0) -> SubjectSplits:
    """The split record of a generator run: the generator trains, the generated validation volumes validate.

    Args:
        val_items: :func:`synth_volumes` output.
        seed: recorded in the split.

    Returns:
        ``SubjectSplits(train=("synth-generator",), val=(<volume ids>), test=())``.
    """
    return SubjectSplits(train=(TRAIN_SUBJECT,), val=tuple(str(i["subject"]) for i in val_items), test=(), seed=seed)


class IdentityLossCheck:
    """Warn when the training loss does not leave the identity's level (the network learns nothing).

    At every iteration it records the batch loss and the same loss of the identity (``loss(image, label)``:
    returning the noisy input). After ``after`` iterations, and then every ``after`` iterations, it compares the
    means of the last ``window`` of each; a ratio above ``ratio`` logs a warning naming both. The latest ratio is
    in :attr:`ratios` and on ``engine.state.metrics["loss_vs_identity"]``.

    Args:
        loss_function: the training loss (``loss(pred, target)``), e.g. ``torch.nn.L1Loss()``.
        after: first check after this many iterations (and every this many).
        window: iterations averaged.
        ratio: warn above this ratio of the training loss to the identity's.
        image_key: batch key of the network input.
        label_key: batch key of the target.
    """

    def __init__(
        self,
        loss_function: Any,
        after: int = 100,
        window: int = 50,
        ratio: float = 0.95,
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        if after < 1 or window < 1:
            raise ValueError(f"after and window must be >= 1, got {after} and {window}")
        if not 0 < ratio <= 10:
            raise ValueError(f"ratio must be in (0, 10], got {ratio}")
        self.loss_function = loss_function
        self.after, self.window, self.ratio = int(after), int(window), float(ratio)
        self.image_key, self.label_key = image_key, label_key
        self.losses: list[float] = []
        self.identity: list[float] = []
        self.ratios: list[tuple[int, float]] = []

    def attach(self, engine: Engine) -> None:
        """Run at every iteration of ``engine`` (a trainer whose output holds ``loss``, ``image`` and ``label``)."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Record this iteration's losses and, every ``after`` iterations, compare them."""
        output = engine.state.output
        items = output if isinstance(output, list) else [output]  # decollated (one dict per sample) or batched

        def gather(key: str) -> torch.Tensor:
            parts = [torch.as_tensor(item[key]).detach().float() for item in items]
            return torch.stack(parts) if isinstance(output, list) else parts[0]

        with torch.no_grad():
            self.identity.append(float(self.loss_function(gather(self.image_key), gather(self.label_key))))
        self.losses.append(float(torch.as_tensor(items[0]["loss"]).detach().float().mean()))
        step = len(self.losses)
        if step % self.after:
            return
        ours = float(np.mean(self.losses[-self.window :]))
        base = float(np.mean(self.identity[-self.window :]))
        value = ours / base if base > 0 else math.inf
        self.ratios.append((step, value))
        engine.state.metrics["loss_vs_identity"] = value
        if value > self.ratio:
            logger.warning(
                "iteration %d: training loss %.5f is %.2f of the identity's %.5f (returning the noisy input): the "
                "network is not learning; check the generator's intensities, the learning rate and the noise range",
                step,
                ours,
                value,
                base,
            )
        else:
            logger.info("iteration %d: training loss %.2f of the identity's (%.5f vs %.5f)", step, value, ours, base)

"""The contrast step of the generator: class intensities, head shells, texture and bias field from tissue maps."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import get_track_meta
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from transforms.synth.common import (
    CLASSES,
    TISSUE_CHANNELS,
    Range,
    check_prob,
    check_range,
    coarse_shape,
    is_number,
    plain_float,
    smooth,
    uniform,
    upsample_field,
    voxel_spacing,
)

__all__ = ["CONTRAST_RANGES", "RandTissueContrast", "RandTissueContrastd"]

CONTRAST_RANGES: dict[str, dict[str, Range]] = {
    "t1": {
        "csf": (0.05, 0.30),
        "gm": (0.40, 0.65),
        "wm": (0.70, 1.00),
        "skull": (0.00, 0.20),
        "scalp": (0.50, 1.00),
        "air": (0.00, 0.03),
    },
    "t2": {
        "csf": (0.80, 1.00),
        "gm": (0.45, 0.70),
        "wm": (0.25, 0.50),
        "skull": (0.00, 0.15),
        "scalp": (0.30, 0.80),
        "air": (0.00, 0.03),
    },
    "pd": {
        "csf": (0.75, 1.00),
        "gm": (0.70, 0.90),
        "wm": (0.55, 0.75),
        "skull": (0.00, 0.20),
        "scalp": (0.50, 0.90),
        "air": (0.00, 0.03),
    },
    "random": {
        "csf": (0.00, 1.00),
        "gm": (0.00, 1.00),
        "wm": (0.00, 1.00),
        "skull": (0.00, 1.00),
        "scalp": (0.00, 1.00),
        "air": (0.00, 0.05),
    },
}
"""Per contrast, the range each class's mean intensity is drawn from (before normalising the brightest to 1)."""


class RandTissueContrast(RandomizableTransform):
    """Synthesise a clean image from a tissue stack: random class intensities, head shells, texture and bias field.

    Model (:mod:`transforms.synth`, step 2), for probabilities ``p_gm, p_wm, p_csf`` and distance ``d`` (mm) outside the
    brain: with ``p_b = p_gm + p_wm + p_csf`` (clipped to 1) and soft shells ``s(b) = sigmoid((b - d) / 0.5 mm)`` at
    the outer boundaries ``b1 = t_rim``, ``b2 = b1 + t_skull``, ``b3 = b2 + t_scalp`` (each thickness drawn uniformly
    in its range and multiplied by ``1 + 0.3 F``), the outside ``1 - p_b`` splits into CSF rim ``s(b1)``, skull
    ``s(b2) - s(b1)``, scalp ``s(b3) - s(b2)`` and air ``1 - s(b3)``. Without a head (probability ``1 - head_prob``)
    it is all air. Image: ``sum_k p_k mu_k (1 + tau_k F_k) * (1 + f N) * exp(b F_bias)``, clipped at 0, with the
    class means ``mu_k`` of a contrast drawn uniformly from ``contrasts`` (names of :data:`CONTRAST_RANGES`, or a
    mapping of that form) and scaled so the brightest of CSF, GM, WM (and scalp, with a head) is 1.

    Args:
        contrasts: contrast names drawn uniformly, or ``{name: {class: (lo, hi)}}`` for every class of
            :data:`CLASSES`.
        head_prob: probability of the skull, scalp and CSF-rim shells.
        rim_mm: CSF-rim thickness range (mm).
        skull_mm: skull thickness range (mm).
        scalp_mm: scalp thickness range (mm).
        texture: range of the within-class smooth variation's amplitude ``tau`` (relative).
        fine_texture: range of the fine texture's amplitude ``f`` (relative; blurred white noise, 1 voxel).
        bias: range of the bias field's log-amplitude ``b`` (0.3: about +-30 %).
        source_spacing: voxel size of the input in mm when it carries no affine.
        prob: probability of randomising; otherwise :meth:`set_fixed`'s values are used (the output is still an
            image, so ``prob=0`` is deterministic rather than the identity).

    Raises:
        ValueError: a parameter out of its range (the message names it).
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        contrasts: Sequence[str] | Mapping[str, Mapping[str, Sequence[float]]] = ("t1", "t2", "pd", "random"),
        head_prob: float = 0.8,
        rim_mm: float | Sequence[float] = (0.5, 3.0),
        skull_mm: float | Sequence[float] = (3.0, 8.0),
        scalp_mm: float | Sequence[float] = (3.0, 10.0),
        texture: float | Sequence[float] = (0.0, 0.1),
        fine_texture: float | Sequence[float] = (0.0, 0.04),
        bias: float | Sequence[float] = (0.0, 0.3),
        source_spacing: float = 1.0,
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, check_prob(prob))
        self.contrasts = self._check_contrasts(contrasts)
        self.head_prob = check_prob(head_prob, "head_prob")
        self.rim_mm = check_range(rim_mm, "rim_mm", 0.0, 50.0)
        self.skull_mm = check_range(skull_mm, "skull_mm", 0.0, 50.0)
        self.scalp_mm = check_range(scalp_mm, "scalp_mm", 0.0, 50.0)
        self.texture = check_range(texture, "texture", 0.0, 1.0)
        self.fine_texture = check_range(fine_texture, "fine_texture", 0.0, 1.0)
        self.bias = check_range(bias, "bias", 0.0, 2.0)
        if not is_number(source_spacing) or not 0 < source_spacing <= 10:
            raise ValueError(f"source_spacing must be a number of mm in (0, 10], got {source_spacing!r}.")
        self.source_spacing = float(source_spacing)
        self.contrast = next(iter(self.contrasts))
        self.means = {k: float(np.mean(v)) for k, v in self.contrasts[self.contrast].items()}
        self.head = True
        self.thickness = {"rim": 0.0, "skull": 0.0, "scalp": 0.0}
        self.amplitudes = {"texture": np.zeros(len(CLASSES)), "fine": 0.0, "bias": 0.0}
        self._fields: dict[str, np.ndarray] = {}
        self._shape: tuple[int, ...] | None = None

    @staticmethod
    def _check_contrasts(contrasts: Any) -> dict[str, dict[str, Range]]:
        if isinstance(contrasts, Mapping):
            table = {}
            for name, ranges in contrasts.items():
                if not isinstance(ranges, Mapping) or set(ranges) != set(CLASSES):
                    raise ValueError(f"contrasts[{name!r}] must map every class of {CLASSES} to a (low, high) range.")
                table[str(name)] = {
                    c: check_range(ranges[c], f"contrasts[{name!r}][{c!r}]", 0.0, 10.0) for c in CLASSES
                }
            if not table:
                raise ValueError("contrasts must name at least one contrast.")
            return table
        if isinstance(contrasts, str) or not isinstance(contrasts, Sequence) or not contrasts:
            raise ValueError(f"contrasts must be a non-empty list of {sorted(CONTRAST_RANGES)}, got {contrasts!r}.")
        unknown = [c for c in contrasts if c not in CONTRAST_RANGES]
        if unknown:
            raise ValueError(f"contrasts must be among {sorted(CONTRAST_RANGES)}, got unknown {unknown}.")
        return {c: CONTRAST_RANGES[c] for c in contrasts}

    def randomize(self, shape: Sequence[int] | None = None, spacing: Sequence[float] | None = None) -> None:
        """Draw the contrast, class means, head shells, amplitudes and (given ``shape``) the random fields.

        Args:
            shape: spatial shape of the stack ``(X, Y, Z)``; ``None`` draws only the scalars.
            spacing: its voxel size in mm (sets the fields' correlation lengths in voxels).
        """
        super().randomize(None)
        names = list(self.contrasts)
        if not self._do_transform:
            self.set_fixed(shape)
            return
        self.contrast = names[int(self.R.randint(len(names)))]
        self.means = {c: uniform(self.R, r) for c, r in self.contrasts[self.contrast].items()}
        self.head = bool(self.R.random_sample() < self.head_prob)
        self.thickness = {k: uniform(self.R, r) for k, r in zip(("rim", "skull", "scalp"), self._shells())}
        self.amplitudes = {
            "texture": np.array([uniform(self.R, self.texture) for _ in CLASSES]),
            "fine": uniform(self.R, self.fine_texture),
            "bias": uniform(self.R, self.bias),
        }
        self._shape = None
        if shape is None:
            return
        spacing = np.full(3, self.source_spacing) if spacing is None else np.asarray(spacing, dtype=np.float64)
        self._shape = tuple(int(s) for s in shape)
        corr = float(self.R.uniform(4.0, 16.0)) / float(np.mean(spacing))
        coarse = coarse_shape(self._shape, corr)
        self._fields = {
            "texture": self.R.standard_normal((len(CLASSES), *coarse)).astype(np.float32),
            "thickness": self.R.standard_normal((1, *coarse_shape(self._shape, 32.0 / float(np.mean(spacing))))).astype(
                np.float32
            ),
            "bias": self.R.standard_normal((1, *coarse_shape(self._shape, 64.0 / float(np.mean(spacing))))).astype(
                np.float32
            ),
            "fine": self.R.standard_normal((1, *self._shape)).astype(np.float32)
            if self.amplitudes["fine"] > 0
            else np.zeros((1, 1, 1, 1), dtype=np.float32),
        }
        self._fine_sigma = 0.7 / spacing

    def set_fixed(self, shape: Sequence[int] | None = None) -> None:
        """Replace the draws by fixed values (what ``prob=0`` gives).

        The first contrast's mid-range means, a head of mid-range shells, no texture, no bias.

        Args:
            shape: spatial shape the values are for (``None``: any).
        """
        self._do_transform = False
        self.contrast = next(iter(self.contrasts))
        self.means = {k: float(np.mean(v)) for k, v in self.contrasts[self.contrast].items()}
        self.head = True
        self.thickness = {k: float(np.mean(r)) for k, r in zip(("rim", "skull", "scalp"), self._shells())}
        self.amplitudes = {"texture": np.zeros(len(CLASSES)), "fine": 0.0, "bias": 0.0}
        self._fields = {}
        self._shape = None if shape is None else tuple(int(s) for s in shape)

    def _shells(self) -> tuple[Range, Range, Range]:
        return self.rim_mm, self.skull_mm, self.scalp_mm

    def probabilities(self, stack: torch.Tensor) -> dict[str, torch.Tensor]:
        """The class probabilities ``{class: (X, Y, Z)}`` of a tissue stack under the current draw.

        Args:
            stack: ``(4, X, Y, Z)`` plain tensor (:data:`TISSUE_CHANNELS`).

        Returns:
            One map per class of :data:`CLASSES`, summing to 1 at every voxel.
        """
        gm, wm, csf, distance = (stack[i].clamp(min=0) for i in range(4))
        total = gm + wm + csf
        brain = total.clamp(max=1.0)
        share = brain / total.clamp(min=1e-6)  # renormalises where the maps sum above 1
        probs = {"gm": gm * share, "wm": wm * share, "csf": csf * share}
        outside = 1.0 - brain
        if self.head:
            modulation: torch.Tensor | float = 1.0
            if "thickness" in self._fields:
                modulation = (1.0 + 0.3 * upsample_field(self._fields["thickness"], brain.shape, brain)[0]).clamp(
                    min=0.2
                )
            b1 = self.thickness["rim"] * modulation
            b2 = b1 + self.thickness["skull"] * modulation
            b3 = b2 + self.thickness["scalp"] * modulation
            s1, s2, s3 = (torch.sigmoid((b - distance) / 0.5) for b in (b1, b2, b3))
            probs["csf"] = probs["csf"] + outside * s1
            probs["skull"] = outside * (s2 - s1).clamp(min=0)
            probs["scalp"] = outside * (s3 - s2).clamp(min=0)
            probs["air"] = outside * (1.0 - s3)
        else:
            zero = torch.zeros_like(brain)
            probs["skull"], probs["scalp"], probs["air"] = zero, zero, outside
        return probs

    def normalised_means(self) -> dict[str, float]:
        """The class means of the current draw, scaled so the brightest tissue (CSF/GM/WM, scalp with a head) is 1."""
        bright = ["csf", "gm", "wm"] + (["scalp"] if self.head else [])
        top = max(self.means[c] for c in bright)
        top = top if top > 1e-6 else 1.0
        return {c: m / top for c, m in self.means.items()}

    def brain_mask(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """The brain mask ``(1, X, Y, Z)``: ``gm + wm + csf >= 0.5`` of a tissue stack, float 0/1, same metadata."""
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        stack = plain_float(img_t)
        mask = ((stack[0] + stack[1] + stack[2]) >= 0.5).to(torch.float32)[None]
        return convert_to_dst_type(mask, img_t, dtype=torch.float32)[0]

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Synthesise the clean image ``(1, X, Y, Z)`` from a stack ``(4, X, Y, Z)``; the input is not modified.

        Args:
            img: the tissue stack (numpy, torch or MetaTensor).
            randomize: draw anew; ``False`` reuses the last draw (same shape).

        Returns:
            The image, float32, with the input's metadata (a MetaTensor when metadata is tracked).

        Raises:
            ValueError: the stack is not ``(4, X, Y, Z)``, or reused draws were made for another shape.
        """
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        if img_t.ndim != 4 or img_t.shape[0] != len(TISSUE_CHANNELS):
            raise ValueError(
                f"{type(self).__name__} needs a ({len(TISSUE_CHANNELS)}, X, Y, Z) stack of {TISSUE_CHANNELS}, "
                f"got shape {tuple(img_t.shape)}."
            )
        spacing = voxel_spacing(img_t, self.source_spacing)
        if randomize:
            self.randomize(img_t.shape[1:], spacing)
        if self._do_transform and self._shape != tuple(img_t.shape[1:]):
            raise ValueError(f"fields were drawn for shape {self._shape}, the stack has {tuple(img_t.shape[1:])}.")
        stack = plain_float(img_t).float()
        probs = self.probabilities(stack)
        means = self.normalised_means()
        out = torch.zeros_like(stack[0])
        texture = upsample_field(self._fields["texture"], out.shape, out) if self._do_transform else None
        for k, name in enumerate(CLASSES):
            term = probs[name] * means[name]
            if texture is not None and self.amplitudes["texture"][k] > 0:
                term = term * (1.0 + float(self.amplitudes["texture"][k]) * texture[k]).clamp(min=0)
            out = out + term
        if self._do_transform and self.amplitudes["fine"] > 0:
            fine = smooth(torch.as_tensor(self._fields["fine"], dtype=out.dtype), self._fine_sigma)[0]
            fine = fine / fine.std().clamp(min=1e-6)
            out = out * (1.0 + self.amplitudes["fine"] * fine).clamp(min=0)
        if self._do_transform and self.amplitudes["bias"] > 0:
            out = out * torch.exp(self.amplitudes["bias"] * upsample_field(self._fields["bias"], out.shape, out)[0])
        return convert_to_dst_type(out.clamp(min=0)[None], img_t, dtype=torch.float32)[0]


class RandTissueContrastd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandTissueContrast`: replaces each key's tissue stack by a synthetic image.

    Each key gets its own draw (normally there is one key). With ``mask_key`` the brain mask of the (first) key's
    stack is stored there, before the stack is replaced.

    Args:
        keys: keys holding tissue stacks ``(4, X, Y, Z)``.
        mask_key: where to store the brain mask ``(1, X, Y, Z)``; ``None`` for none.
        contrasts, head_prob, rim_mm, skull_mm, scalp_mm, texture, fine_texture, bias, source_spacing: as the
            array class.
        prob: probability of randomising an item (as the array class).
        allow_missing_keys: skip absent keys instead of raising.
    """

    backend = RandTissueContrast.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str | None = "mask",
        contrasts: Sequence[str] | Mapping[str, Mapping[str, Sequence[float]]] = ("t1", "t2", "pd", "random"),
        head_prob: float = 0.8,
        rim_mm: float | Sequence[float] = (0.5, 3.0),
        skull_mm: float | Sequence[float] = (3.0, 8.0),
        scalp_mm: float | Sequence[float] = (3.0, 10.0),
        texture: float | Sequence[float] = (0.0, 0.1),
        fine_texture: float | Sequence[float] = (0.0, 0.04),
        bias: float | Sequence[float] = (0.0, 0.3),
        source_spacing: float = 1.0,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, check_prob(prob))
        self.mask_key = mask_key
        self.synth = RandTissueContrast(
            contrasts, head_prob, rim_mm, skull_mm, scalp_mm, texture, fine_texture, bias, source_spacing, prob=1.0
        )

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandTissueContrastd:
        """Seed this transform and its inner array transform; returns ``self``."""
        super().set_random_state(seed, state)
        self.synth.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Synthesise every present key; returns a new dictionary."""
        d = dict(data)
        self.randomize(None)
        for n, key in enumerate(self.key_iterator(d)):
            stack = convert_to_tensor(d[key], track_meta=get_track_meta())
            if n == 0 and self.mask_key is not None:
                d[self.mask_key] = self.synth.brain_mask(stack)
            self.synth.randomize(stack.shape[1:], voxel_spacing(stack, self.synth.source_spacing))
            if not self._do_transform:
                self.synth.set_fixed(stack.shape[1:])
            d[key] = self.synth(stack, randomize=False)
        return d

"""The demo's settings: :class:`DemoSettings`, the default run (:data:`DEFAULT`) and the smoke run (:data:`QUICK`)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CLASS_NAMES",
    "DEFAULT",
    "ENCODER_KEYS",
    "HELDOUT_PREFIX",
    "HELDOUT_SEED_OFFSET",
    "MEASURED_MIN",
    "PRECISION",
    "QUICK",
    "DemoSettings",
]

#: ResUnet3D arguments that shape its encoder, which the classifier's ResNet takes too.
ENCODER_KEYS = (
    "shortcut_type",
    "bias_downsample",
    "conv1_t_size",
    "conv1_t_stride",
    "widen_factor",
    "block_inplanes",
    "no_max_pool",
    "norm",
    "act",
)
CLASS_NAMES = ("control", "patient")
#: The held-out classification cohort's seed is the demo's seed plus this (never the training cohort's seed).
HELDOUT_SEED_OFFSET = 1000
#: The held-out classification cohort's subject IDs start with this (the training cohort's with ``sub-``).
HELDOUT_PREFIX = "held-"
#: The demo's figures (README, report) were measured in float32; ``precision: auto`` would turn bf16 on where the CPU
#: has it natively and change them, so the demo pins float32 on every CPU.
PRECISION = "fp32"
#: Wall minutes of the default demo on 2 idle cores, set-up excluded (README, 2026-12-06): a 2-core AMD EPYC with
#: AVX-512 and AVX512-BF16, and the same CPU with torch's and oneDNN's kernels limited to AVX2.
MEASURED_MIN = {"avx512": 16.4, "avx2": 18.0}


def _small_denoiser() -> dict[str, Any]:
    """The shipped small denoiser (:data:`networks.presets.PRESETS`), imported only when a setting is built."""
    from networks.presets import preset

    return preset("small")


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Everything that decides the demo's numbers (stored beside the outputs; a change starts the demo over).

    Attributes:
        subjects: cohort size (half with atrophy).
        spacing: cohort voxel size in mm (2 mm gives 80x96x80 volumes).
        seed: seeds the cohort, the splits, the weights and the data order.
        denoiser: ``network_def`` overrides of ``common.yaml`` (ResUnet3D arguments). The default keeps the stem at
            full resolution (``conv1_t_stride=1``, 3^3 kernel) and predicts the noise (``residual_output``): with the
            bundle's stride-2 stem the output is rebuilt from half-resolution features, which cannot represent white
            noise, and in this budget the network stayed at the noisy input's PSNR (measured: 24.7 vs. 24.95 dB
            after 140 iterations), while the full-resolution stem passed the Gaussian filter within ~100. Instance
            norm instead of batch norm: with batch norm, whose running statistics mix brain and air patches, one
            seed's validation PSNR swung between 10 and 29 dB while its training loss fell; instance norm's rose
            steadily on every seed (README, Findings).
        denoise_epochs: denoiser epochs (one epoch = every training volume once, ``num_samples`` patches each).
            160: with 80 the network tied non-local means in the brain and lost to it over the whole volume; with
            160 it beat it in both on every seed (README, Findings).
        patch_size: training patch edge (voxels).
        batch_size: denoiser volumes per batch.
        num_samples: patches drawn per volume and epoch.
        learning_rate: denoiser learning rate (Adam, cosine schedule).
        fresh_noise: draw the cohort's noise (the noise of its ``gaussian15/`` folder, so the test volumes' noise
            model) afresh on the clean target for every training patch (``train_denoise.yaml``'s ``train_noise``);
            ``False`` trains on the folder's one fixed draw per subject, which the network learns by heart.
        noise_range: with ``fresh_noise``, draw each patch's noise level from this ``(low, high)`` range (0-255
            scale, ``train_denoise.yaml``'s ``train_noise_level``) instead of the folder's one level: a blind
            denoiser for scans whose noise level is not known. ``None`` trains at the folder's level.
        background_fraction: share of training patches centred outside the brain (the cohort's air): with none the
            network never sees the background and leaves its noise in place.
        val_interval: validate the denoiser every this many epochs (whole volumes; the best one is kept).
        window: sliding-window tile edge (voxels) of the denoiser's validation and inference, as the bundle's
            ``patch_size``: instance norm takes each window's own statistics, so windows of the training patch's
            size; ``None`` runs each volume in one window.
        denoise_val_subjects: cohort *train* subjects held back to validate the denoiser.
        classifier_epochs: epochs of each classifier. 24 epochs of the cohort's 21 train subjects in batches of 4
            (last partial batch dropped) are 120 steps of 4 volumes at AdamW lr 1e-3: the recipe with which the
            study's randomly initialised encoder reached AUC 0.82 with 24 labelled subjects. The demo keeps the
            epoch with the best balanced accuracy on its 5 val subjects where the study kept the last: compared on 32
            generated validation subjects (seed 2000, not the held-out test cohort; scratch classifier, seed 0, at
            4 mm on a loaded machine), the kept epoch scored AUC 0.84 [0.67, 0.96] and the last 0.78 [0.59, 0.93],
            difference -0.07 [-0.21, +0.05]: no reason to change the rule.
        classifier_batch_size: classifier batch size.
        classifier_learning_rate: classifier learning rate (AdamW, cosine schedule).
        classical: classical denoisers compared (:data:`pipeline.evaluation.classical.CLASSICAL_DENOISERS` names).
        tuning_subjects: cohort *val* subjects the classical filters' parameters are tuned on.
        quick_grids: use the classical denoisers' short parameter grids.
        figure_subjects: held-out subjects shown in tri-planar figures.
        heldout_subjects: subjects of the separate held-out cohort the classifiers (and the logistic floor) are
            scored on: the same simulation, another seed (``seed +`` :data:`HELDOUT_SEED_OFFSET`) and ID prefix
            (:data:`HELDOUT_PREFIX`). 64 (32 per class) give a 95 % AUC interval about +-0.1 wide near 0.8, which
            tells 0.5 from 0.8; the cohort's own 6 test subjects gave intervals as wide as [0, 1].
    """

    subjects: int = 32
    spacing: float = 2.0
    seed: int = 0
    denoiser: Mapping[str, Any] = dataclasses.field(default_factory=_small_denoiser)
    denoise_epochs: int = 160
    patch_size: int = 32
    batch_size: int = 2
    num_samples: int = 2
    learning_rate: float = 3e-3
    fresh_noise: bool = True
    noise_range: tuple[float, float] | None = None
    background_fraction: float = 0.25
    val_interval: int = 4
    window: int | None = 32
    denoise_val_subjects: int = 2
    classifier_epochs: int = 24
    classifier_batch_size: int = 4
    classifier_learning_rate: float = 1e-3
    classical: tuple[str, ...] = ("gaussian", "median", "nl_means")
    tuning_subjects: int = 2
    quick_grids: bool = False
    figure_subjects: int = 2
    heldout_subjects: int = 64

    def __post_init__(self) -> None:
        positive = (
            "subjects",
            "denoise_epochs",
            "patch_size",
            "batch_size",
            "num_samples",
            "denoise_val_subjects",
            "classifier_epochs",
            "classifier_batch_size",
            "tuning_subjects",
            "figure_subjects",
            "val_interval",
        )
        if self.heldout_subjects < 4:
            raise ValueError(f"heldout_subjects must be >= 4 (both classes, twice), got {self.heldout_subjects}")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.subjects < 8:
            raise ValueError(f"subjects must be >= 8 (each split part needs both classes), got {self.subjects}")
        if self.noise_range is not None and not (
            len(self.noise_range) == 2 and 0 < self.noise_range[0] <= self.noise_range[1] and self.fresh_noise
        ):
            raise ValueError(
                f"noise_range must be (low, high), 0 < low <= high, with fresh_noise; got {self.noise_range}"
            )
        if self.window is not None and self.window < 8:
            raise ValueError(f"window must be None or >= 8 voxels, got {self.window}")
        if not 0 <= self.background_fraction < 1:
            raise ValueError(f"background_fraction must be in [0, 1), got {self.background_fraction}")
        for name in ("learning_rate", "classifier_learning_rate"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        from pipeline.evaluation.classical import CLASSICAL_DENOISERS

        unknown = [m for m in self.classical if m not in CLASSICAL_DENOISERS]
        if unknown:
            raise ValueError(f"classical must name denoisers among {list(CLASSICAL_DENOISERS)}, got {unknown}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


#: The demo ``make demo`` runs (its measured duration: :data:`MEASURED_MIN`).
DEFAULT = DemoSettings()

#: A smoke run of every stage in about a minute: 8 subjects at 4 mm (40x48x40), one epoch each, 12 held-out subjects.
QUICK = DemoSettings(
    subjects=8,
    spacing=4.0,
    denoiser={
        "model_depth": 10,
        "levels": 2,
        "block_inplanes": [8, 16, 32, 64],
        "conv1_t_stride": 1,
        "conv1_t_size": 3,
        "residual_output": True,
        "norm": "instance",
    },
    denoise_epochs=1,
    val_interval=1,
    patch_size=32,
    batch_size=2,
    num_samples=1,
    denoise_val_subjects=1,
    classifier_epochs=1,
    classifier_batch_size=2,
    tuning_subjects=1,
    quick_grids=True,
    figure_subjects=1,
    heldout_subjects=12,
)

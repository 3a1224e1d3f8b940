"""What the study runs: its sizes (full and quick), the baseline recipe read from the bundle, and the arms.

Every arm changes one thing from the baseline (the bundle's default denoiser and recipe) and is trained for the same
number of steps with the same seeds, so a difference between two arms is the effect of that one change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ARMS",
    "BUDGET_90",
    "FULL",
    "LONGER_ARMS",
    "MIN_SEEDS_ARMS",
    "MIN_SEEDS_TRANSFER",
    "QUICK",
    "TINY",
    "Arm",
    "StudySettings",
    "baseline_recipe",
    "pretrain_kind",
]

#: Seeds a denoising contrast needs before its verdict counts (fewer: the report calls it underpowered).
MIN_SEEDS_ARMS = 5
#: Seeds a transfer contrast needs (the AUC of a fine-tuned classifier varies more between seeds).
MIN_SEEDS_TRANSFER = 10

#: The ResUnet3D arguments the bundle shares between workflows (``network_def`` of ``common.yaml``).
_NETWORK_KEYS = (
    "model_depth",
    "block_inplanes",
    "conv1_t_size",
    "conv1_t_stride",
    "levels",
    "residual_output",
    "skip",
    "upsample",
    "norm",
)


@dataclasses.dataclass(frozen=True)
class Arm:
    """One variant of the baseline.

    Attributes:
        name: short identifier (folder and table row).
        question: the notes' question it answers.
        network: ResUnet3D arguments that replace the baseline's.
        training: training settings that replace the baseline's (``lr_factor``, ``optimizer``, ``lr``, ``momentum``).
    """

    name: str
    question: str
    network: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    training: Mapping[str, Any] = dataclasses.field(default_factory=dict)


ARMS: tuple[Arm, ...] = (
    Arm("baseline", "the bundle's default denoiser and recipe"),
    Arm("stem_maxpool_off", "stem max-pool on or off", {"no_max_pool": True}),
    Arm("norm_instance", "BatchNorm, InstanceNorm or none", {"norm": "instance"}),
    Arm("norm_none", "BatchNorm, InstanceNorm or none", {"norm": "none"}),
    Arm("upsample_interp", "transposed convolution or interpolation + convolution", {"upsample": "interp"}),
    Arm("levels_4", "keep the 512-channel (deepest) level or drop it", {"levels": 4}),
    Arm("depth_18", "encoder depth 10 / 18 / 34", {"model_depth": 18}),
    Arm("depth_34", "encoder depth 10 / 18 / 34", {"model_depth": 34}),
    Arm("stem_stride_2", "stem stride 1 or 2", {"conv1_t_stride": 2}),
    Arm("skip_cat", "skips by addition or concatenation", {"skip": "cat"}),
    Arm("attention_gate", "attention gate / SE / transformer bottleneck", {"attention": "gate"}),
    Arm("attention_se", "attention gate / SE / transformer bottleneck", {"attention": "se"}),
    Arm("bottleneck_transformer", "attention gate / SE / transformer bottleneck", {"bottleneck": "transformer"}),
    Arm("lr_x1/3", "learning rate x1/3, x1, x3", training={"lr_factor": 1 / 3}),
    Arm("lr_x3", "learning rate x1/3, x1, x3", training={"lr_factor": 3.0}),
    Arm("sgd_0.1", "SGD with momentum at the notes' 0.1 vs Adam", training={"optimizer": "sgd", "lr": 0.1}),
)

#: The arms re-run at a longer budget to check that their ranking holds (chosen before any result was seen: the
#: baseline, one architecture change and one recipe change).
LONGER_ARMS = ("baseline", "skip_cat", "lr_x3")


@dataclasses.dataclass(frozen=True)
class StudySettings:
    """The sizes of a study run.

    Attributes:
        spacing: voxel size (mm) of every simulated volume.
        seeds: seeds per denoising arm (:data:`MIN_SEEDS_ARMS` for a verdict that counts; 2 give an interval).
        transfer_seeds: seeds of each transfer encoder (:data:`MIN_SEEDS_TRANSFER` for a verdict that counts).
        patch: training patch side (voxels).
        patches_per_step: patches per step (one volume gives them all).
        steps: training steps of every denoising arm (the equal budget).
        longer_factor: the longer budget of :data:`LONGER_ARMS`, in multiples of ``steps`` (0: skipped).
        train_subjects: subjects whose clean volumes the denoising arms train on.
        eval_subjects: held-out cohort subjects the arms are scored on.
        eval_generated: held-out generated heads (skull, scalp, random contrast) the arms are scored on.
        noise_level: Gaussian noise level on the 0-255 scale (training and scoring).
        labelled_train: labelled subjects the classifiers may learn from (the larger set).
        labelled_small: the smaller labelled set (the first of ``labelled_train``, balanced).
        labelled_test: the fixed classification test set.
        unlabelled: subjects of the separate unlabelled cohort the denoiser pretrains on.
        pretrain_steps: denoising steps of the pretraining.
        pretrain_budgets: the pretraining budgets, in multiples of ``pretrain_steps``, each a denoiser-pretrained
            encoder compared with the random one (budget 0), e.g. ``(0.25, 1.0, 4.0)`` for a curve.
        finetune_steps: fine-tuning steps (the same for both labelled set sizes).
        finetune_batch: volumes per fine-tuning step.
        bootstrap: bootstrap resamples.
        margin_psnr_db: equivalence margin of a PSNR difference (dB), fixed before the run.
        margin_ssim: equivalence margin of an SSIM difference, fixed before the run.
        margin_auc: equivalence margin of an AUC difference, fixed before the run.
        norm: the baseline's normalisation instead of the bundle's (``None`` keeps the bundle's, now instance norm).
            Batch norm by default: at 24^3 (quick: 16^3) patches the 4-level arm's deepest map is one voxel, which
            instance norm cannot normalise, and the study's published figures were measured with batch norm.
    """

    spacing: float = 3.0
    seeds: int = MIN_SEEDS_ARMS
    transfer_seeds: int = MIN_SEEDS_TRANSFER
    patch: int = 24
    patches_per_step: int = 4
    steps: int = 192
    longer_factor: int = 2
    train_subjects: int = 16
    eval_subjects: int = 4
    eval_generated: int = 4
    noise_level: float = 15.0
    labelled_train: int = 120
    labelled_small: int = 24
    labelled_test: int = 80
    unlabelled: int = 48
    pretrain_steps: int = 288
    pretrain_budgets: tuple[float, ...] = (1.0,)
    finetune_steps: int = 120
    finetune_batch: int = 4
    bootstrap: int = 2000
    margin_psnr_db: float = 0.1
    margin_ssim: float = 0.001
    margin_auc: float = 0.05
    norm: str | None = "batch"

    def __post_init__(self) -> None:
        for name in ("seeds", "transfer_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.pretrain_budgets or any(not b > 0 for b in self.pretrain_budgets):
            raise ValueError(f"pretrain_budgets must be positive multiples, got {self.pretrain_budgets}")
        for name in ("margin_psnr_db", "margin_ssim", "margin_auc"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 (an equivalence margin), got {getattr(self, name)}")
        if self.labelled_small > self.labelled_train:
            raise ValueError(
                f"labelled_small ({self.labelled_small}) must not exceed labelled_train ({self.labelled_train})"
            )
        for name in ("steps", "patch", "train_subjects", "eval_subjects", "labelled_test", "unlabelled"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values (recorded in ``results.json``)."""
        return dataclasses.asdict(self)


#: The full study, with the seeds a verdict needs: projected at about 130 minutes on 2 CPU cores with native bf16
#: (187 runs; the 86 runs of :data:`BUDGET_90` took 60 minutes there); about 3 hours on 2 AVX2 cores in float32
#: (measured 2026-12-07: 13.7 minutes per round of the 16 arms, about 12 per transfer seed).
FULL = StudySettings()
#: ``--budget 90min``: the full sizes with 3 seeds each, which fit 90 minutes on 2 cores; every contrast is
#: underpowered and the report says so.
BUDGET_90 = dataclasses.replace(FULL, seeds=3, transfer_seeds=3)
#: Every arm and every part, at toy sizes: the wiring, in minutes (the test suite runs it).
QUICK = StudySettings(
    seeds=3,
    transfer_seeds=3,
    spacing=6.0,
    patch=16,
    patches_per_step=2,
    steps=3,
    longer_factor=2,
    train_subjects=4,
    eval_subjects=2,
    eval_generated=1,
    labelled_train=12,
    labelled_small=8,
    labelled_test=8,
    unlabelled=4,
    pretrain_steps=3,
    finetune_steps=3,
    finetune_batch=2,
    bootstrap=200,
)

#: ``RESUNET3D_TINY=1``: every arm and part once more, smaller still (2 seeds, 1 step): seconds, wiring only.
TINY = dataclasses.replace(
    QUICK,
    seeds=2,
    transfer_seeds=2,
    steps=1,
    pretrain_steps=1,
    finetune_steps=1,
    labelled_train=8,
    labelled_small=4,
    labelled_test=6,
    eval_generated=1,
    bootstrap=50,
)


def pretrain_kind(budget: float) -> str:
    """The encoder name of a denoiser pretrained for ``budget`` times the pretraining steps (``"denoiser"`` at 1)."""
    return "denoiser" if budget == 1.0 else f"denoiser_x{budget:g}"


def baseline_recipe(bundle_dir: str | None = None, norm: str | None = None) -> dict[str, Any]:
    """The bundle's default denoiser and its training recipe, read from the shipped configs.

    Args:
        bundle_dir: the bundle folder (default: the checkout's or the installed one).
        norm: the denoiser's normalisation instead of the bundle's (:attr:`StudySettings.norm`).

    Returns:
        ``{"network": ResUnet3D arguments, "optimizer": "adam", "lr": float, "weight_decay": float}``.
    """
    from monai.bundle import ConfigParser

    from pipeline.bundle_files import bundle_configs

    parser = ConfigParser()
    parser.read_config(bundle_configs("common.yaml", "train_denoise.yaml", bundle_dir=bundle_dir))
    network = {key: parser.get_parsed_content(f"network_def#{key}") for key in _NETWORK_KEYS}
    network["block_inplanes"] = list(network["block_inplanes"])
    if norm is not None:
        network["norm"] = norm
    return {
        "network": network,
        "optimizer": str(parser.get_parsed_content("fit_settings#optimizer")),
        "lr": float(parser.get_parsed_content("fit_settings#lr")),
        "weight_decay": float(parser.get_parsed_content("fit_settings#weight_decay")),
    }

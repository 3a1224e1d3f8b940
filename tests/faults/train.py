"""Faults fed to training through the engines: a bad scan, a full disk, a corrupt checkpoint to resume from."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from tests.faults.corpus import BAD_FILES, write_bad_file, write_scan
from tests.faults.harness import CLEAR, Case, FileLoss, Outcome, describe_error, disk_full, expect_error
from transforms.errors import InputError

__all__ = ["CASES", "cubes", "matches_uninterrupted", "tiny_unet", "train_tiny"]


def cubes(n: int, seed: int, sigma: float = 0.25, size: int = 16) -> list[dict[str, Any]]:
    """Tiny in-memory training pairs: two nested boxes plus Gaussian noise of ``sigma``; mask = the outer box.

    Also the engines' tests' data (``tests/test_engines.py``).
    """
    generator = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        clean = torch.zeros(1, size, size, size)
        lo = int(torch.randint(2, 6, (1,), generator=generator))
        clean[:, lo : lo + 8, 3:13, 4:12] = 0.8
        clean[:, lo + 2 : lo + 5, 5:9, 5:9] = 0.4
        noisy = clean + sigma * torch.randn(clean.shape, generator=generator)
        items.append({"image": noisy, "label": clean, "mask": (clean > 0).float(), "subject": f"sub-{seed}{i:02d}"})
    return items


def tiny_unet() -> torch.nn.Module:
    from monai.networks.nets import UNet

    from pipeline.utils.seed import seed_everything

    seed_everything(0)
    return UNet(3, 1, 1, channels=(4, 8), strides=(2,), num_res_units=1)


def train_tiny(run_dir: Path, epochs: int, loss: Any = "l1", **kwargs: Any) -> Any:
    """The reference tiny training run of the kill and disk-full cases (CPU, seconds)."""
    from pipeline.training.denoise import train_denoiser

    settings = dict(
        max_epochs=epochs, batch_size=2, optimizer="sgd", lr=0.05, momentum=0.9, scheduler="cosine",
        checkpoint_every=1, seed=3, progress=False, device="cpu", loss=loss, ssim_kernel_size=5,
    )  # fmt: skip
    settings.update(kwargs)
    return train_denoiser(cubes(4, seed=1), cubes(1, seed=2), tiny_unet(), run_dir, **settings)


def _train_bad_file(work: Path) -> Outcome:
    from monai.networks.nets import UNet

    from pipeline.training.denoise import train_denoiser
    from transforms.presets import denoise_transforms

    good = write_scan(work / "scans" / "good.nii.gz")
    bad = write_bad_file(work / "scans", "truncated")
    items = [{"image": str(p), "label": str(p), "subject": p.name} for p in (good, bad)]
    run = work / "run"

    def train() -> None:
        train_denoiser(
            items, items[:1], UNet(3, 1, 1, channels=(4, 8), strides=(2,)), run, max_epochs=1, progress=False,
            device="cpu", train_transform=denoise_transforms("train", patch_size=16, divisible_k=2),
            val_transform=denoise_transforms("val", patch_size=16, divisible_k=2),
        )  # fmt: skip

    return expect_error(train, InputError, [str(bad)], BAD_FILES["truncated"][2])


def _train_disk_full(work: Path) -> Outcome:
    from pipeline.training.checkpoint import CheckpointError, find_last_checkpoint, load_checkpoint

    run = work / "run"
    with disk_full(torch, "save", "checkpoint_epoch=2"):
        outcome = expect_error(lambda: train_tiny(run, 3), CheckpointError, ["checkpoint_epoch=2.pt"], ["space"])
    last = find_last_checkpoint(run)
    if last is None or last.name != "checkpoint_epoch=1.pt":
        raise FileLoss(f"the previous checkpoint is gone: newest is {last}")
    try:
        state = load_checkpoint(last)
        load_checkpoint(run / "model.pt")
    except Exception as error:
        raise FileLoss(f"a previous checkpoint no longer loads: {describe_error(error)}") from error
    if state["trainer"]["iteration"] != 2 or list(run.glob("*.part*")) + list(run.glob(".*.part*")):
        raise FileLoss(f"unexpected checkpoint state or partial files in {run}")
    matches_uninterrupted(train_tiny(run, 3).last_checkpoint, 3)
    return Outcome(CLEAR, outcome.detail + " -- resumed to the uninterrupted run's weights")


_REFERENCE: dict[int, dict[str, Any]] = {}


def _uninterrupted(epochs: int) -> dict[str, Any]:
    """The last checkpoint of :func:`train_tiny` run without interruption for ``epochs`` (computed once per process)."""
    from pipeline.training.checkpoint import load_checkpoint

    if epochs not in _REFERENCE:
        with tempfile.TemporaryDirectory() as folder:
            _REFERENCE[epochs] = load_checkpoint(train_tiny(Path(folder), epochs).last_checkpoint)
    return _REFERENCE[epochs]


def matches_uninterrupted(checkpoint: Path, epochs: int) -> None:
    """Raise :class:`FileLoss` unless ``checkpoint`` ends where an uninterrupted run does, with equal weights."""
    from pipeline.training.checkpoint import load_checkpoint

    first, second = load_checkpoint(checkpoint), _uninterrupted(epochs)
    if first["trainer"]["iteration"] != second["trainer"]["iteration"]:
        raise FileLoss(f"the resumed run ended at iteration {first['trainer']['iteration']}, not {second['trainer']}")
    for key, tensor in second["network"].items():
        if not torch.equal(first["network"][key], tensor):
            raise FileLoss(f"the resumed run's weights differ from the uninterrupted run's ({key})")


def _corrupt_resume_checkpoint(work: Path) -> Outcome:
    from pipeline.training.checkpoint import CheckpointError

    run = work / "run"
    train_tiny(run, 1)
    last = run / "checkpoint_epoch=1.pt"
    last.write_bytes(last.read_bytes()[:100])
    return expect_error(lambda: train_tiny(run, 2), CheckpointError, [str(last)], ["truncated", "corrupt"])


#: The train cases, in report order.
CASES: tuple[Case, ...] = (
    Case("train/bad-file", _train_bad_file),
    Case("train/disk-full-checkpoint", _train_disk_full),
    Case("train/corrupt-checkpoint-on-resume", _corrupt_resume_checkpoint),
)

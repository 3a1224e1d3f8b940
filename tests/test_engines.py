"""Denoising engine: learning, exact resume after a kill, reproducibility, NaN guard, TensorBoard, mixed precision."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from monai.inferers import SimpleInferer
from monai.networks.nets import UNet
from monai.transforms import Compose, RandFlipd, RandGaussianNoised
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pipeline.training.checkpoint import find_last_checkpoint, load_checkpoint
from pipeline.training.denoise import build_denoise_evaluator, evaluate_denoiser, train_denoiser
from pipeline.training.engines import make_loader
from pipeline.training.handlers import AutocastInferer, NonFiniteLossError
from pipeline.utils.seed import seed_everything
from tests.faults.train import cubes
from transforms.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def tiny_unet(seed: int = 0) -> torch.nn.Module:
    seed_everything(seed)
    return UNet(3, 1, 1, channels=(8, 16), strides=(2,), num_res_units=1)


def random_transforms() -> Compose:
    return Compose([RandFlipd(("image", "label"), prob=0.5, spatial_axis=0), RandGaussianNoised("image", prob=0.5)])


@pytest.mark.slow
def test_denoiser_overfits_a_fixed_batch_and_beats_the_noisy_input(tmp_path):
    data = cubes(2, seed=1)
    result = train_denoiser(
        data, data, tiny_unet(), tmp_path, max_epochs=30, batch_size=2, optimizer="adam", lr=1e-2,
        scheduler="none", loss="mse", val_interval=30, checkpoint_every=30, progress=False,
    )  # fmt: skip
    assert result.losses[-1] < result.losses[0] / 10
    (_, psnr), (_, noisy) = result.history["psnr_brain"][-1], result.history["psnr_brain_noisy"][-1]
    assert psnr > noisy
    assert result.history["psnr_volume"][-1][1] > result.history["psnr_volume_noisy"][-1][1]
    assert result.best_checkpoint == tmp_path / "model.pt"
    info = (tmp_path / "run_info.json").read_text()
    assert '"train_subjects"' in info and "sub-100" in info and '"monai"' in info and '"seed": 0' in info


def test_epoch_reseed_replays_shuffling_transforms_and_workers():
    from monai.data import DataLoader, Dataset

    from pipeline.utils.seed import epoch_seed, reseed

    data = Dataset(cubes(6, seed=0), transform=random_transforms())

    def epoch(loader, seed, number):
        reseed(epoch_seed(seed, number), data)
        return [(b["subject"], b["image"]) for b in loader]

    for workers in (0, 2):
        loader = DataLoader(data, batch_size=2, shuffle=True, num_workers=workers)
        first, again, other = epoch(loader, 0, 3), epoch(loader, 0, 3), epoch(loader, 0, 4)
        assert [s for s, _ in first] == [s for s, _ in again]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(first, again))
        assert [s for s, _ in first] != [s for s, _ in other] or any(
            not torch.equal(a, b) for (_, a), (_, b) in zip(first, other)
        )


class KilledAtEpochStart(Exception):
    """Stands in for a kill: raised at the start of a given epoch, after the previous epoch's checkpoint."""


def _train(run_dir, max_epochs, resume=False, **kwargs):
    kwargs = dict(
        max_epochs=max_epochs, batch_size=2, optimizer="sgd", lr=0.05, momentum=0.9, scheduler="cosine",
        warmup_epochs=1, loss="l1_ssim", ssim_kernel_size=5, checkpoint_every=1, seed=7, resume=resume,
        progress=False, train_transform=random_transforms(), **kwargs,
    )  # fmt: skip
    return train_denoiser(cubes(4, seed=3), cubes(1, seed=4), tiny_unet(seed=1), run_dir, **kwargs)


def test_kill_and_resume_ends_with_the_same_weights_and_metrics(tmp_path, monkeypatch):
    straight = _train(tmp_path / "straight", 4)

    from pipeline.training.handlers import EpochReseed

    original = EpochReseed.__call__

    def killing(self, engine):
        if engine.state.epoch == 3:
            raise KilledAtEpochStart
        original(self, engine)

    monkeypatch.setattr(EpochReseed, "__call__", killing)
    with pytest.raises(KilledAtEpochStart):
        _train(tmp_path / "resumed", 4)
    assert find_last_checkpoint(tmp_path / "resumed").name == "checkpoint_epoch=2.pt"
    monkeypatch.setattr(EpochReseed, "__call__", original)
    resumed = _train(tmp_path / "resumed", 4, resume=True)  # new network, optimiser, engines: only the files remain

    a = load_checkpoint(straight.last_checkpoint)
    b = load_checkpoint(resumed.last_checkpoint)
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == 8
    for key, tensor in a["network"].items():
        assert torch.equal(tensor, b["network"][key]), key
    assert a["lr_scheduler"] == b["lr_scheduler"]
    assert resumed.history["psnr_brain"] == straight.history["psnr_brain"][2:]
    assert resumed.losses == straight.losses[4:]
    assert resumed.best_metric == straight.best_metric


def test_same_seed_same_numbers_and_different_seed_different_numbers(tmp_path):
    kwargs = dict(
        max_epochs=2, batch_size=2, optimizer="adam", lr=1e-2, progress=False, train_transform=random_transforms()
    )
    data, val = cubes(4, seed=5), cubes(1, seed=6)
    first = train_denoiser(data, val, tiny_unet(), tmp_path / "a", seed=3, **kwargs)
    second = train_denoiser(data, val, tiny_unet(), tmp_path / "b", seed=3, **kwargs)
    other = train_denoiser(data, val, tiny_unet(), tmp_path / "c", seed=4, **kwargs)
    assert first.losses == second.losses
    assert first.history == second.history
    assert first.losses != other.losses


class NaNAfter(torch.nn.Module):
    """L1 loss that turns NaN from the ``bad``-th call on."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.calls, self.bad = 0, bad

    def forward(self, pred, target):
        self.calls += 1
        loss = torch.nn.functional.l1_loss(pred, target)
        return loss * float("nan") if self.calls >= self.bad else loss


def test_nan_loss_stops_with_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, iteration 1 of 2 \(global iteration 3\)"):
        train_denoiser(
            cubes(4, seed=1), cubes(1, seed=2), tiny_unet(), tmp_path, max_epochs=5, batch_size=2,
            loss=NaNAfter(bad=3), checkpoint_every=1, progress=False,
        )  # fmt: skip
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["checkpoint_epoch=1.pt", "model.pt"]
    checkpoint = load_checkpoint(tmp_path / "checkpoint_epoch=1.pt")
    assert all(torch.isfinite(t).all() for t in checkpoint["network"].values())
    assert all(torch.isfinite(t).all() for t in load_checkpoint(tmp_path / "model.pt").values())
    assert "global iteration 3" in (tmp_path / "train.log").read_text()


def test_tensorboard_has_losses_metrics_learning_rate_and_slices(tmp_path):
    train_denoiser(cubes(2, seed=1), cubes(1, seed=2), tiny_unet(), tmp_path, max_epochs=2, progress=False)
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {"train/loss", "train/lr/group_0"} | {
        f"{m}_{r}{s}" for m in ("psnr", "ssim") for r in ("brain", "volume") for s in ("", "_noisy")
    }
    assert expected <= scalars
    assert {"val/axial", "val/coronal", "val/sagittal"} <= set(events.Tags()["images"])
    image = events.Images("val/axial")[-1]
    assert image.step == 2 and image.width == 4 * image.height  # noisy | denoised | clean | error
    assert [e.step for e in events.Scalars("psnr_brain")] == [1, 2]


def test_early_stopping_ends_the_run_and_checkpoints_its_last_epoch(tmp_path):
    seed_everything(0)
    frozen_output = torch.nn.Conv3d(1, 1, kernel_size=1)  # lr 1e-12: the metric cannot improve
    result = train_denoiser(
        cubes(2, seed=1), cubes(1, seed=2), frozen_output, tmp_path, max_epochs=6, optimizer="sgd", lr=1e-12,
        scheduler="none", early_stop_patience=2, checkpoint_every=10, progress=False,
    )  # fmt: skip
    assert result.stopped_early and result.epochs == 3 and result.best_epoch == 1
    assert result.last_checkpoint.name == "checkpoint_epoch=3.pt"
    assert load_checkpoint(result.last_checkpoint)["early_stop"]["counter"] == 2


def test_sliding_window_evaluation_matches_whole_volume_for_a_pointwise_network():
    data = cubes(2, seed=9, size=20)
    net = torch.nn.Conv3d(1, 1, kernel_size=1)
    whole = evaluate_denoiser(net, data, device="cpu")
    windows = evaluate_denoiser(net, data, roi_size=(8, 8, 8), overlap=0.5, device="cpu")
    for key, value in whole.items():
        assert windows[key] == pytest.approx(value, rel=1e-4, abs=1e-4), key
    assert set(whole) == {f"{m}_{r}{s}" for m in ("psnr", "ssim") for r in ("brain", "volume") for s in ("", "_noisy")}


def test_identity_network_scores_exactly_the_noisy_reference():
    data = cubes(2, seed=4)
    metrics = evaluate_denoiser(torch.nn.Identity(), data, device="cpu")
    assert metrics["psnr_brain"] == pytest.approx(metrics["psnr_brain_noisy"])
    assert metrics["ssim_volume"] == pytest.approx(metrics["ssim_volume_noisy"])


def test_bf16_autocast_runs_on_the_cpu(tmp_path):
    inferer = AutocastInferer(SimpleInferer(), device_type="cpu", dtype=torch.bfloat16)
    out = inferer(torch.rand(1, 1, 8, 8, 8), torch.nn.Conv3d(1, 1, 3, padding=1))
    assert out.dtype == torch.bfloat16
    result = train_denoiser(
        cubes(2, seed=1), cubes(1, seed=2), tiny_unet(), tmp_path, max_epochs=1, precision="bf16", progress=False
    )
    assert result.losses and all(torch.isfinite(torch.tensor(result.losses)))
    with pytest.raises(ValueError, match="precision"):
        train_denoiser(cubes(2, 1), cubes(1, 2), tiny_unet(), tmp_path / "x", precision="fp8", progress=False)
    with pytest.raises(ValueError, match="CUDA"):
        build_denoise_evaluator(tiny_unet(), make_loader(cubes(1, 2)), device="cpu", precision="fp16")


class RejectSubject:
    """A dictionary transform that refuses one subject the way ``LoadScand`` refuses a bad file."""

    def __init__(self, subject: str) -> None:
        self.subject = subject

    def __call__(self, item: dict) -> dict:
        if item["subject"] == self.subject:
            raise InputError(f"scans/{self.subject}.nii.gz", "could not be read as NIfTI: the file is truncated")
        return item


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_bad_training_scan_ends_in_its_input_error_not_monais_wrapper(tmp_path, num_workers):
    data = cubes(3, seed=1)
    bad = data[1]["subject"]
    with pytest.raises(InputError) as caught:
        train_denoiser(
            data, data[:1], tiny_unet(), tmp_path, max_epochs=1, batch_size=1, train_transform=RejectSubject(bad),
            val_transform=RejectSubject("nobody"), num_workers=num_workers, progress=False,
        )  # fmt: skip
    assert caught.value.path == f"scans/{bad}.nii.gz"
    assert caught.value.problem == "could not be read as NIfTI: the file is truncated"
    assert isinstance(caught.value.__cause__, RuntimeError)  # MONAI's/torch's wrapper stays chained for debugging


def test_bad_arguments_fail_before_training(tmp_path):
    for kwargs, match in (
        ({"loss": "l2"}, "loss must be one of"),
        ({"optimizer": "lion"}, "optimizer must be one of"),
        ({"scheduler": "cyclic"}, "scheduler must be one of"),
        ({"key_metric": "dice"}, "key_metric must be one of"),
    ):
        with pytest.raises(ValueError, match=match):
            train_denoiser(cubes(2, 1), cubes(1, 2), tiny_unet(), tmp_path, max_epochs=1, progress=False, **kwargs)
    assert not list(tmp_path.glob("*.pt"))


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {tests!r})
    from test_engines import _train

    # from epoch 3 on (2 iterations an epoch), each optimiser step waits 0.5 s: the kill lands mid-epoch however
    # fast the CPU (a fast one finished all 5 epochs within the test's 0.3 s); the numbers do not change
    steps, sgd_step = [0], torch.optim.SGD.step

    def paced_step(self, *args, **kwargs):
        steps[0] += 1
        if steps[0] > 4:
            time.sleep(0.5)
        return sgd_step(self, *args, **kwargs)

    torch.optim.SGD.step = paced_step
    _train({run_dir!r}, 5)
    """
)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    killed = tmp_path / "killed"
    script = KILL_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), run_dir=str(killed))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (killed / "checkpoint_epoch=2.pt").exists():
            assert proc.poll() is None, "the training subprocess ended before its second checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        time.sleep(0.3)  # into epoch 3 (or 4): mid-epoch, possibly mid-write
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    last = find_last_checkpoint(killed)
    load_checkpoint(last)  # the newest checkpoint is complete
    resumed = _train(killed, 5, resume=True)
    straight = _train(tmp_path / "straight", 5)
    a, b = load_checkpoint(resumed.last_checkpoint), load_checkpoint(straight.last_checkpoint)
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == 10
    for key, tensor in a["network"].items():
        assert torch.equal(tensor, b["network"][key]), key
    assert not list(killed.glob(".*.part.pt"))


def test_run_logging_records_what_monai_logfilehandler_misses(tmp_path):
    """Why a run logs through ``run_logging`` and not MONAI's ``LogfileHandler``: the latter records only its engine's
    own logger. If this test fails, ``LogfileHandler`` records the whole run and can replace ``run_logging``."""
    import logging

    from ignite.engine import Engine
    from monai.handlers import LogfileHandler

    from pipeline.training.runinfo import run_logged

    def step(engine, batch):
        engine.logger.warning("from the engine")
        logging.getLogger("pipeline.training").warning("from the pipeline")

    engine = Engine(step)
    LogfileHandler(output_dir=str(tmp_path / "monai")).attach(engine)
    engine.run([0], max_epochs=1)
    monai_log = (tmp_path / "monai" / "log.txt").read_text()
    assert "from the engine" in monai_log and "from the pipeline" not in monai_log

    run_logged(tmp_path / "ours", lambda: Engine(step).run([0], max_epochs=1))
    ours = (tmp_path / "ours" / "train.log").read_text()
    assert "from the engine" in ours and ours.count("from the pipeline") == 1
    assert run_logged(None, lambda: 7) == 7 and not (tmp_path / "none").exists()

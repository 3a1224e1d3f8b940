"""Reproduce the ready denoiser: ``python -m pipeline.inference.ready --out runs/ready [--install]``.

It trains the small ResUnet3D on the synthetic-head generator alone (``train_synth.yaml``: the MNI152 template's tissue
maps as random heads of any contrast, 1-3 mm, skull or none, Gaussian and Rician noise at 1-30/255 and Poisson
noise, a fresh head and fresh noise for every patch; no real scan is read), selects the epoch of best PSNR on the
generator's own validation heads, and writes ``denoiser.pt`` and its model card ``denoiser.json`` to ``--out``;
``--install`` also copies them into the package (``pipeline/inference/ready/``). ``--epochs`` and
``--samples-per-epoch`` shorten a try-out; the shipped model used the defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.bundle_files import bundle_configs
from pipeline.inference.ready import READY_DIR
from pipeline.runtime.model_card import read_model_card
from pipeline.utils.files import atomic_path

__all__ = ["RECIPE", "main", "package_model", "recipe", "train"]

logger = logging.getLogger(__name__)

#: The shipped model's recipe: overrides of common + train_denoise + small_denoiser + train_synth.
RECIPE: dict[str, object] = {
    "num_epochs": 150,
    "val_interval": 5,
    "ckpt_interval": 5,
    "synth::samples_per_epoch": 32,
    "synth::gaussian": [1.0, 30.0],
    "synth::rician": [1.0, 30.0],
}

_NOISE = {
    "inputs": "generated heads (transforms.synth): Gaussian and Rician noise of 1-30/255, Poisson of 50-2000 counts",
    "targets": "the generated clean heads",
    "prediction": "the clean scan",
    "levels_255": [1.0, 30.0],
}


def recipe(epochs: int | None = None, samples_per_epoch: int | None = None) -> dict[str, object]:
    """:data:`RECIPE` with a run of other length: the overrides a run uses, recorded in its model card.

    Args:
        epochs: epochs instead of the recipe's (validation and checkpoints every 5, or every epoch below 5).
        samples_per_epoch: generated heads per epoch instead of the recipe's.

    Returns:
        The overrides.
    """
    used = dict(RECIPE)
    if epochs is not None:
        used.update(num_epochs=epochs, val_interval=min(epochs, 5), ckpt_interval=min(epochs, 5))
    if samples_per_epoch is not None:
        used["synth::samples_per_epoch"] = samples_per_epoch
    return used


def train(
    out: str | os.PathLike, epochs: int | None = None, samples_per_epoch: int | None = None, **overrides: object
) -> Path:
    """Train the ready denoiser's recipe (:data:`RECIPE`) into ``out``.

    Args:
        out: the run folder (``models/`` and the logs go there).
        epochs: epochs instead of the recipe's.
        samples_per_epoch: generated heads per epoch instead of the recipe's.
        **overrides: further config overrides (e.g. ``{"synth::map_spacing": 4.0}`` for a quick try-out).

    Returns:
        The weights of the epoch of best validation PSNR (``out/models/model.pt``), their card beside them.
    """
    from pipeline.bundle_run import run

    out = Path(out)
    overrides = {**recipe(epochs, samples_per_epoch), **overrides}
    run(
        config_file=bundle_configs("train_denoise.yaml", "small_denoiser.yaml", "train_synth.yaml"),
        ckpt_dir=os.fspath(out / "models"),
        output_dir=os.fspath(out),
        **overrides,
    )
    return out / "models" / "model.pt"


def package_model(
    weights: str | os.PathLike, dest: str | os.PathLike, command: str, used: dict[str, object] | None = None
) -> Path:
    """Copy trained weights to ``dest/denoiser.pt`` with their card (``denoiser.json``) saying how they were made.

    Args:
        weights: the trained ``model.pt`` (its card ``model.json`` beside it).
        dest: the folder written.
        command: the command that trained them, recorded in the card.
        used: the recipe they were trained with (:func:`recipe`; default :data:`RECIPE`), recorded in the card.

    Returns:
        The weights' new path.
    """
    card = read_model_card(weights)
    if card is None:
        raise FileNotFoundError(f"{weights} has no model card (model.json beside it)")
    dest = Path(dest)
    target = dest / "denoiser.pt"
    with atomic_path(target) as tmp:
        shutil.copyfile(weights, tmp)
    training = {"command": command, "recipe": used or RECIPE}
    card["model_card"].update(weights=target.name, noise=_NOISE, training=training)
    with atomic_path(dest / "denoiser.json") as tmp:
        tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s and its card %s", target, dest / "denoiser.json")
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.inference.ready", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/ready", help="run folder (default: runs/ready)")
    parser.add_argument("--install", action="store_true", help="copy the result into the package's ready/ folder")
    parser.add_argument("--epochs", type=int, default=None, help=f"default {RECIPE['num_epochs']}")
    parser.add_argument("--samples-per-epoch", type=int, default=None, help="default 32 heads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    weights = train(args.out, args.epochs, args.samples_per_epoch)
    command = "python -m pipeline.inference.ready " + " ".join(argv if argv is not None else sys.argv[1:])
    packaged = package_model(weights, Path(args.out), command.strip(), recipe(args.epochs, args.samples_per_epoch))
    if args.install:
        for name in ("denoiser.pt", "denoiser.json"):
            shutil.copyfile(packaged.parent / name, READY_DIR / name)
        logger.info("installed into %s", READY_DIR)
    logger.info("done in %.1f min", (time.perf_counter() - start) / 60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Seeding: one integer makes a run reproducible, including after it is killed and resumed.

A run is seeded once at the start (:func:`seed_everything`) and then re-seeded at the start of every epoch from
``(seed, epoch)`` (:func:`epoch_seed`, used by :class:`pipeline.training.handlers.EpochReseed`). The per-epoch re-seed
is
what makes resume exact: a run restarted from the checkpoint of epoch *k* draws, in epoch *k + 1*, the same data
order, the same random transforms and the same data-loader worker seeds as a run that was never interrupted.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from monai.data.utils import set_rnd
from monai.utils import set_determinism

__all__ = ["epoch_seed", "reseed", "seed_everything", "seed_worker"]

_SEED_SPACE = 2**31 - 1


def seed_everything(seed: int, deterministic: bool = True) -> int:
    """Seed Python's ``random``, NumPy and torch, and ask torch for deterministic kernels.

    Args:
        seed: a non-negative integer.
        deterministic: also set ``torch.backends.cudnn.deterministic`` (via ``monai.utils.set_determinism``) and
            warn-only deterministic algorithms, so CPU runs repeat bit for bit.

    Returns:
        The seed, for recording in ``run_info.json``.

    Raises:
        ValueError: if ``seed`` is negative or not an integer.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    set_determinism(seed=seed if deterministic else None)
    if not deterministic:
        torch.backends.cudnn.deterministic = False
    random.seed(seed)
    np.random.seed(seed % _SEED_SPACE)  # noqa: NPY002 (the global state third-party code draws from)
    torch.manual_seed(seed)
    return seed


def epoch_seed(seed: int, epoch: int) -> int:
    """Derive the seed of one epoch from the run seed, independent of everything that happened before.

    Args:
        seed: the run seed.
        epoch: the 1-based epoch number.

    Returns:
        An integer in ``[0, 2**31 - 1)``, a hash of ``(seed, epoch)`` through NumPy's ``SeedSequence`` (so epochs
        of runs with neighbouring seeds do not share streams).
    """
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, dtype=np.uint32)[0]) % _SEED_SPACE


def reseed(seed: int, *datasets: object) -> None:
    """Seed Python, NumPy and torch's global generators and every MONAI random transform inside ``datasets``.

    torch's global generator decides ``DataLoader`` shuffling and worker base seeds when an epoch's iterator is
    created; MONAI's ``DataLoader`` only seeds the transforms of a ``num_workers=0`` loader once, at construction,
    so the transforms are re-seeded here too (``monai.data.utils.set_rnd``).

    Args:
        seed: the seed to apply.
        datasets: datasets (or anything holding ``Randomizable`` transforms) to re-seed.
    """
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002
    torch.manual_seed(seed)
    for dataset in datasets:
        if dataset is not None:
            set_rnd(dataset, seed)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for a plain ``torch.utils.data.DataLoader``: seed a worker from torch's per-worker seed.

    MONAI's ``DataLoader`` does this by itself (it also re-seeds the dataset's random transforms); use this with
    torch's loader. The worker seed is derived by torch from the base seed drawn when the epoch's iterator is
    created, so it follows :func:`reseed`.

    Args:
        worker_id: the worker index (unused: torch's per-worker seed already includes it).
    """
    worker_seed = torch.initial_seed() % _SEED_SPACE
    random.seed(worker_seed)
    np.random.seed(worker_seed)  # noqa: NPY002
    info = torch.utils.data.get_worker_info()
    if info is not None:
        set_rnd(info.dataset, worker_seed)

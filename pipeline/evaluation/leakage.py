"""The image-level leakage guard: sets that must be disjoint may not share an image, whatever its file or subject ID.

Subject IDs alone prove nothing about the voxels (a copied scan under a new name passes an ID check), so
:func:`check_distinct_volumes` compares a hash of each volume's voxel array between every pair of sets. The study
(:mod:`pipeline.study.data`) and the demo's held-out classification cohort (:mod:`pipeline.demo.heldout`) call it.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, Sequence

import nibabel as nib
import numpy as np

from pipeline.errors import LeakageError

__all__ = ["check_distinct_volumes", "volume_hash"]


def volume_hash(path: str) -> str:
    """SHA-256 of a volume's voxel array (float32, with its shape): equal for the same image in any file or header."""
    volume = np.ascontiguousarray(nib.load(path).get_fdata(dtype=np.float32))
    digest = hashlib.sha256(str(volume.shape).encode())
    digest.update(volume.tobytes())
    return digest.hexdigest()


def check_distinct_volumes(groups: Mapping[str, Sequence[str]]) -> None:
    """Refuse sets that must be disjoint but share an image (the same voxels under any file name or subject ID).

    Args:
        groups: ``{set name: image paths}``, e.g. the denoiser's training volumes and the held-out ones.

    Raises:
        LeakageError: naming, for each pair of sets that share images, the shared files (``a = b``).
    """
    hashes = {name: {volume_hash(p): str(p) for p in paths} for name, paths in groups.items()}
    overlaps = {}
    for a, b in itertools.combinations(hashes, 2):
        shared = set(hashes[a]) & set(hashes[b])
        if shared:
            overlaps[(a, b)] = [f"{hashes[a][h]} = {hashes[b][h]}" for h in shared]
    if overlaps:
        raise LeakageError(overlaps)

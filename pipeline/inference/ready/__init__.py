"""The ready denoiser the package ships: trained only on generated heads, used when no weights are given.

``denoiser.pt`` (the network's ``state_dict``) and its model card ``denoiser.json`` sit in this folder; ``README.md``
beside them gives the command that reproduces them from scratch and what they were measured to do.
``python -m pipeline.inference.infer denoise scan.nii.gz`` and ``resunet3d-denoise scan.nii.gz`` use them when
``--weights`` is not given.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import CheckpointError

__all__ = ["READY_DIR", "default_weights"]

READY_DIR = Path(__file__).parent
"""The folder of the shipped weights, their card and their README."""


def default_weights() -> Path:
    """The shipped denoiser's weights file.

    Returns:
        ``<package>/pipeline/inference/ready/denoiser.pt``.

    Raises:
        CheckpointError: the file is missing (an installation without package data).
    """
    path = READY_DIR / "denoiser.pt"
    if not path.is_file():
        raise CheckpointError(
            f"the ready denoiser {path} is missing from this installation; reinstall the package "
            "(pip install -e .) or give trained weights with --weights."
        )
    return path

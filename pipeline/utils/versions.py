"""The versions that decide a run's numbers, recorded in run records and model cards."""

from __future__ import annotations

import contextlib
import platform
from importlib import metadata

__all__ = ["package_versions"]

_PACKAGES = ("torch", "monai", "pytorch-ignite", "numpy", "nibabel", "SimpleITK", "tensorboard", "resunet3d")


def package_versions() -> dict[str, str]:
    """Python, platform and the installed versions of the packages that decide a run's numbers."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions

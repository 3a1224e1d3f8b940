"""``RESUNET3D_TINY=1``: the project's command lines at smoke-test sizes, to check that a command works in seconds.

With the variable set (to anything but ``0`` or nothing), the entry points keep every argument and file of the
command as written and shrink only what costs time:

* ``python -m pipeline.bundle_run``: one epoch (``num_epochs``) and no loader worker processes (``num_workers``),
  whatever the command line says; the networks, patches and data are unchanged, so weights written this way fit the
  next command (evaluation, inference, fine-tuning, ``ckpt_export``).
* ``python -m pipeline.data.cohort``: at most 8 subjects at 8 mm or coarser (24^3 volumes).
* ``python -m pipeline.demo``: the ``--quick`` settings.
* ``python -m pipeline.study``: its ``TINY`` settings (every arm and part, 2 seeds, 1 step each).

``tests/test_readme_commands.py`` runs the READMEs' commands this way::

    RESUNET3D_TINY=1 .venv/bin/python -m pipeline.bundle_run --config_file "[...]" --dataset_dir runs/cohort ...
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["ENV", "TINY_COHORT_SPACING", "TINY_COHORT_SUBJECTS", "bundle_overrides", "cohort_size", "enabled"]

logger = logging.getLogger(__name__)

#: The environment variable.
ENV = "RESUNET3D_TINY"
#: The most subjects a tiny cohort gets (each split part keeps both classes).
TINY_COHORT_SUBJECTS = 8
#: The finest voxel size in mm of a tiny cohort (24^3 volumes).
TINY_COHORT_SPACING = 8.0
#: Config keys a tiny bundle run sets, where the merged configs define them.
_BUNDLE = {"num_epochs": 1, "num_workers": 0}


def enabled() -> bool:
    """Whether ``RESUNET3D_TINY`` is set to something other than ``""`` or ``"0"``."""
    return os.environ.get(ENV, "").strip() not in ("", "0")


def bundle_overrides(config: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides a tiny bundle run adds (empty unless :func:`enabled`): one epoch, no loader workers.

    Args:
        config: the merged configs (only the keys they define are set).

    Returns:
        ``{key: value}`` to apply over the command line's overrides.
    """
    if not enabled():
        return {}
    overrides = {key: value for key, value in _BUNDLE.items() if key in config}
    if overrides:
        logger.info("%s is set: %s", ENV, ", ".join(f"{k}={v}" for k, v in overrides.items()))
    return overrides


def cohort_size(subjects: int, spacing: float) -> tuple[int, float]:
    """The number of subjects and the voxel size of a cohort, shrunk when :func:`enabled`.

    Args:
        subjects: as asked for.
        spacing: voxel size in mm, as asked for.

    Returns:
        ``(subjects, spacing)``: at most :data:`TINY_COHORT_SUBJECTS` at :data:`TINY_COHORT_SPACING` mm or coarser
        when tiny, else unchanged.
    """
    if not enabled():
        return subjects, spacing
    tiny = min(subjects, TINY_COHORT_SUBJECTS), max(spacing, TINY_COHORT_SPACING)
    if tiny != (subjects, spacing):
        logger.info("%s is set: %d subjects at %g mm (asked: %d at %g mm)", ENV, *tiny, subjects, spacing)
    return tiny

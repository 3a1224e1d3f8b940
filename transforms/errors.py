"""The error every loader and dataset builder raises for input a researcher can fix."""

from __future__ import annotations

import os

__all__ = ["InputError"]


class InputError(ValueError):
    """A file or folder that cannot be used, with the path and the problem in plain words.

    Args:
        path: the offending file or folder.
        problem: what is wrong with it, phrased for a researcher (no library internals).

    Example:
        >>> str(InputError("scans/sub-01.nii.gz", "is a 4-D image (shape 64x64x40x3); expected one 3-D volume"))
        'scans/sub-01.nii.gz: is a 4-D image (shape 64x64x40x3); expected one 3-D volume'
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        return (type(self), (self.path, self.problem))

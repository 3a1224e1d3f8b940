"""Where the bundle's configs are: the checkout's ``bundle/``, the installed ``bundle`` package, or a given folder.

In a checkout the configs live in ``<repo>/bundle/configs``; ``pip install .`` ships the same folder as the data
package ``bundle`` (``setup.cfg``: ``package_data``), found with :mod:`importlib.resources`. A folder given
explicitly (``--bundle-dir``, or the ``RESUNET3D_BUNDLE_DIR`` environment variable) wins over both, e.g. to run
edited copies of the configs.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
from pathlib import Path

__all__ = ["BUNDLE_DIR_VARIABLE", "bundle_configs", "default_bundle_dir", "find_bundle_dir"]

#: Environment variable naming a bundle folder (one holding ``configs/common.yaml``).
BUNDLE_DIR_VARIABLE = "RESUNET3D_BUNDLE_DIR"
_MARKER = Path("configs") / "common.yaml"


def _installed() -> Path | None:
    try:
        if importlib.util.find_spec("bundle") is None:
            return None
        root = Path(os.fspath(importlib.resources.files("bundle")))
    except (ImportError, TypeError, ValueError):
        return None
    return root if (root / _MARKER).is_file() else None


def _checkout() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        if (parent / "bundle" / _MARKER).is_file():
            return parent / "bundle"
    return None


def default_bundle_dir() -> Path:
    """The checkout's or the installed bundle folder, without raising (``<repo>/bundle`` when neither is found).

    Returns:
        The folder.
    """
    return _checkout() or _installed() or Path(__file__).resolve().parents[1] / "bundle"


def find_bundle_dir(override: str | os.PathLike | None = None) -> Path:
    """The bundle folder (the one holding ``configs/``).

    Args:
        override: a folder to use instead (``--bundle-dir``); default: ``$RESUNET3D_BUNDLE_DIR``, else the
            checkout's ``bundle/``, else the installed ``bundle`` package.

    Returns:
        The folder.

    Raises:
        FileNotFoundError: the folder given has no ``configs/common.yaml``, or no bundle is found at all.
    """
    given = override if override is not None else os.environ.get(BUNDLE_DIR_VARIABLE) or None
    if given is not None:
        folder = Path(given).expanduser()
        if not (folder / _MARKER).is_file():
            raise FileNotFoundError(
                f"bundle folder {folder} has no {_MARKER}: give the folder that holds configs/ (e.g. bundle/)"
            )
        return folder.resolve()
    found = _checkout() or _installed()
    if found is None:
        raise FileNotFoundError(
            "the bundle's configs were not found (neither a checkout's bundle/ nor the installed `bundle` package); "
            f"reinstall the package or give the folder with --bundle-dir or ${BUNDLE_DIR_VARIABLE}"
        )
    return found


def bundle_configs(*names: str, bundle_dir: str | os.PathLike | None = None) -> list[str]:
    """``common.yaml`` followed by the named configs of the bundle, as paths.

    Args:
        *names: config file names after ``common.yaml`` (``"inference.yaml"``).
        bundle_dir: the bundle folder (default :func:`find_bundle_dir`).

    Returns:
        The paths, ``common.yaml`` first.
    """
    folder = find_bundle_dir(bundle_dir)
    return [os.fspath(folder / "configs" / name) for name in ("common.yaml", *names)]

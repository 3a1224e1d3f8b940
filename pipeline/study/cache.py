"""Finished runs on disk: each run's result is one JSON file, written atomically when the run ends.

A killed study loses only the run in progress; the next start skips every run whose file exists. A cache records the
settings it was made with and refuses to mix results of different settings.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeline.utils.files import atomic_path

__all__ = ["RunCache"]

logger = logging.getLogger(__name__)


class RunCache:
    """Results of finished runs under ``root``, one ``<part>/<name>.json`` per run.

    Args:
        root: the cache folder (created).
        settings: what the results depend on; a cache made with other settings is refused.

    Raises:
        ValueError: when ``root`` holds results of different settings (names the differing keys).
    """

    def __init__(self, root: str | os.PathLike, settings: Mapping[str, Any]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        stamp = self.root / "settings.json"
        wanted = json.loads(json.dumps(dict(settings)))
        if stamp.is_file():
            found = json.loads(stamp.read_text())
            if found != wanted:
                changed = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
                raise ValueError(
                    f"{self.root} holds runs made with other settings ({', '.join(changed)} differ): "
                    "use another --out, or delete the folder to start again."
                )
        else:
            self._write(stamp, wanted)

    def path(self, part: str, name: str) -> Path:
        """Where run ``name`` of ``part`` is stored (``/`` in names becomes ``-``)."""
        return self.root / part / f"{name.replace('/', '-')}.json"

    def get(self, part: str, name: str) -> dict[str, Any] | None:
        """The stored result, or ``None`` if the run has not finished."""
        path = self.path(part, name)
        return json.loads(path.read_text()) if path.is_file() else None

    def run(self, part: str, name: str, compute: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
        """The stored result of ``name``, computing and storing it first if it is missing.

        Args:
            part: the study part (``arms``, ``transfer``...).
            name: the run's name within its part.
            compute: runs it and returns a JSON-serialisable mapping.
        """
        found = self.get(part, name)
        if found is not None:
            logger.debug("%s/%s: cached", part, name)
            return found
        result = json.loads(json.dumps(dict(compute())))
        self._write(self.path(part, name), result)
        return result

    @staticmethod
    def _write(path: Path, value: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")

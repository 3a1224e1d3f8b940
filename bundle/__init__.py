"""The MONAI bundle of resunet3d, as a data package: ``configs/*.yaml``, ``metadata*.json``, ``logging.conf``, docs.

Nothing to import: ``pip install .`` ships these files with the code so the installed tools find their configs
(:mod:`pipeline.bundle_files`); in a checkout they are read in place.
"""

from __future__ import annotations

__all__: list[str] = []

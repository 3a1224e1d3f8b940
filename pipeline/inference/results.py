"""What a batch of scans came to: one :class:`ScanResult` per scan, gathered in an :class:`InferenceSummary`."""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.errors import ScanFailuresError

__all__ = ["InferenceSummary", "ScanResult"]


@dataclasses.dataclass(frozen=True)
class ScanResult:
    """What happened to one scan.

    Attributes:
        source: the input path.
        status: ``"done"``, ``"skipped"`` (output already there) or ``"failed"``.
        output: the output file (``None`` for the classifier, whose rows go to one CSV).
        reason: why it failed (empty otherwise).
        seconds: wall time spent on the scan.
        guard: the inference guard's report (:class:`pipeline.inference.guard.GuardReport`), when it ran.
    """

    source: str
    status: str
    output: str | None = None
    reason: str = ""
    seconds: float = 0.0
    guard: dict[str, Any] | None = None


@dataclasses.dataclass
class InferenceSummary:
    """The results of one batch, in input order.

    Attributes:
        results: one :class:`ScanResult` per scan.
        rows: the classifier's CSV rows (empty for denoising).
        table: the classifier's CSV file (``None`` for denoising).
        ignored: ``(path, reason)`` of the input folders' entries that are not scans (text, sidecars...).
    """

    results: list[ScanResult] = dataclasses.field(default_factory=list)
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    table: str | None = None
    ignored: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def count(self, status: str) -> int:
        """Number of scans with a given status.

        Args:
            status: ``"done"``, ``"skipped"`` or ``"failed"``.

        Returns:
            How many scans ended with it.
        """
        return sum(result.status == status for result in self.results)

    @property
    def failed(self) -> list[ScanResult]:
        """The scans that could not be processed."""
        return [result for result in self.results if result.status == "failed"]

    def report(self) -> str:
        """The batch in words: every input that was not processed is named.

        Returns:
            One ``FAILED <file>: <reason>`` line per failed scan, one ``IGNORED <file>: <reason>`` line per entry
            that is not a scan, then ``N scans: D done, S skipped (output exists), F failed``; when scans were
            skipped the line says so loudly (``S SKIPPED because their output exists ...``), and it ends with the
            number of ignored files when there are any.
        """
        lines = [f"FAILED {result.source}: {result.reason}" for result in self.failed]
        lines += [f"IGNORED {path}: {reason}" for path, reason in self.ignored]
        skipped = self.count("skipped")
        skip_text = (
            f"{skipped} SKIPPED because their output exists (not recomputed; pass --overwrite / overwrite=True to "
            "recompute)"
            if skipped
            else "0 skipped (output exists)"
        )
        line = f"{len(self.results)} scans: {self.count('done')} done, {skip_text}, {self.count('failed')} failed"
        if self.ignored:
            line += f"; {len(self.ignored)} file(s) ignored (not scans)"
        lines.append(line)
        return "\n".join(lines)

    def raise_if_failed(self) -> InferenceSummary:
        """Turn failed scans into an error (after every scan has been tried).

        Returns:
            ``self``, when no scan failed.

        Raises:
            ScanFailuresError: carrying this summary, when a scan failed.
        """
        if self.failed:
            raise ScanFailuresError(self)
        return self

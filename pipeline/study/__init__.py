"""The study: the notes' open questions and the transfer hypothesis, answered with seeds and intervals.

``python -m pipeline.study`` trains every arm (:mod:`pipeline.study.plan`), caches each finished run on disk
(:mod:`pipeline.study.cache`), and writes ``report.md``, ``results.json`` and figures
(:mod:`pipeline.study.report`). :mod:`pipeline.study.arms` runs the denoising questions,
:mod:`pipeline.study.transfer` the pretraining question, :mod:`pipeline.evaluation.stats` computes the intervals.
"""

from __future__ import annotations

__all__: list[str] = []

"""The study's report: every question with its answer, the number, its interval and the command that produced it.

Reads the cached runs (:class:`pipeline.study.cache.RunCache`), computes the intervals
(:mod:`pipeline.evaluation.stats`) and writes ``results.json``, ``report.md`` and ``arms.png`` (each arm's difference
from the baseline with its interval).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluation.report import markdown_table, pyplot, save_figure
from pipeline.evaluation.stats import (
    auc,
    balanced_accuracy,
    bonferroni_level,
    bootstrap,
    bootstrap_interval,
    contrast_summary,
    paired_contrast,
)
from pipeline.study.arms import METRICS
from pipeline.study.cache import RunCache
from pipeline.study.plan import ARMS, LONGER_ARMS, MIN_SEEDS_ARMS, MIN_SEEDS_TRANSFER, StudySettings, pretrain_kind
from pipeline.utils.files import atomic_path
from pipeline.utils.machine import machine_info

__all__ = ["arms_results", "check_equal_budgets", "transfer_kinds", "transfer_results", "write_report"]

#: What each answer of the transfer question is called, by verdict.
_ANSWERS = {"better": "helps", "worse": "hurts", "equivalent": "equivalent", "inconclusive": "inconclusive"}


def _margin(settings: StudySettings, metric: str) -> float:
    """The equivalence margin the settings fixed for ``metric`` before the run."""
    return settings.margin_psnr_db if metric.startswith("psnr") else settings.margin_ssim


def _runs(cache: RunCache, part: str, arm: str, seeds: int) -> list[dict[str, Any]] | None:
    runs = [cache.get(part, f"{arm}/seed{seed}") for seed in range(seeds)]
    return None if any(r is None for r in runs) else runs  # type: ignore[return-value]


def _table(runs: Sequence[Mapping[str, Any]], metric: str, subjects: Sequence[str] | None = None) -> np.ndarray:
    """``(seeds, volumes)`` values of ``metric``, optionally only the volumes of ``subjects``."""
    return np.array([[v[metric] for v in r["volumes"] if subjects is None or v["subject"] in subjects] for r in runs])


def check_equal_budgets(runs: Mapping[str, Sequence[Mapping[str, Any]]], keys: Sequence[str] = ("steps",)) -> None:
    """Refuse to compare runs that did not get the same budget and protocol, or were not scored on the same items.

    Args:
        runs: ``{arm or encoder: its runs}``; every run records ``keys`` and the items it was scored on
            (``volumes[*].subject`` or ``subjects``).
        keys: what must be equal across every run (``steps``; ``protocol`` for fine-tuning).

    Raises:
        ValueError: naming the key and the values that differ.
    """
    for key in (*keys, "items"):
        seen: dict[str, list[str]] = {}
        for name, group in runs.items():
            for run in group:
                if key == "items":
                    value = run["subjects"] if "subjects" in run else [v["subject"] for v in run["volumes"]]
                else:
                    value = run.get(key)
                seen.setdefault(json.dumps(value, sort_keys=True), []).append(f"{name}/seed{run.get('seed', '?')}")
        if len(seen) > 1:
            shown = "; ".join(f"{value[:80]}: {', '.join(names[:4])}" for value, names in seen.items())
            raise ValueError(f"unequal {key} between compared runs, so a difference is not the arm's effect: {shown}")


def _powered(summary: dict[str, Any], required: int) -> dict[str, Any]:
    summary["required_seeds"] = required
    summary["underpowered"] = summary["seeds"] < required
    return summary


def arms_results(cache: RunCache, settings: StudySettings, part: str = "arms", n_resamples: int = 2000) -> list[dict]:
    """Per arm: mean metrics, paired differences from the baseline with both intervals and the verdict, speed.

    Every difference carries :func:`pipeline.evaluation.stats.contrast_summary`'s figures at the Bonferroni level
    over the part's contrasts, with the settings' equivalence margin.

    Raises:
        ValueError: when the arms' runs differ in steps or in the volumes they were scored on.
    """
    arms = [a for a in ARMS if part == "arms" or a.name in LONGER_ARMS]
    base = _runs(cache, part, "baseline", settings.seeds)
    if base is None:
        return []
    level = bonferroni_level(len(arms) - 1)
    found = {arm.name: _runs(cache, part, arm.name, settings.seeds) for arm in arms}
    found = {name: runs for name, runs in found.items() if runs is not None}
    check_equal_budgets(found)
    generated = {v["subject"] for v in base[0]["volumes"] if v["subject"].startswith("generated")}
    subsets = {"generated": generated, "cohort": {v["subject"] for v in base[0]["volumes"]} - generated}
    rows = []
    for arm in arms:
        runs = found.get(arm.name)
        if runs is None:
            continue
        row: dict[str, Any] = {
            "arm": arm.name,
            "question": arm.question,
            "steps": runs[0]["steps"],
            "seeds": len(runs),
            # medians over the seeds: a run slowed by another job on a shared machine does not move them
            "seconds_per_step": float(np.median([r["seconds_per_step"] for r in runs])),
            "cpu_seconds": float(np.median([r["cpu_seconds"] for r in runs])),
            "precision": runs[0].get("precision"),
        }
        for metric in METRICS:
            row[metric] = float(_table(runs, metric).mean())
            if arm.name != "baseline":
                diff = paired_contrast(
                    _table(runs, metric), _table(base, metric), _margin(settings, metric), level, n_resamples
                )
                row[f"diff_{metric}"] = _powered(diff, MIN_SEEDS_ARMS)
        if arm.name != "baseline":
            for name, keep in subsets.items():
                if keep:
                    arm_t, base_t = (_table(r, "psnr_brain", sorted(keep)) for r in (runs, base))
                    diff = paired_contrast(arm_t, base_t, settings.margin_psnr_db, level, n_resamples)
                    row[f"diff_psnr_brain_{name}"] = _powered(diff, MIN_SEEDS_ARMS)
        rows.append(row)
    return rows


def _auc_table(runs: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([r["prob"] for r in runs]), np.array(runs[0]["labels"])


def _auc_stat(prob: np.ndarray, labels: np.ndarray) -> Any:
    return lambda r, c: float(np.mean([auc(prob[s, c], labels[c]) for s in r]))


def _bacc_stat(prob: np.ndarray, labels: np.ndarray) -> Any:
    return lambda r, c: float(np.mean([balanced_accuracy(prob[s, c] >= 0.5, labels[c]) for s in r]))


def transfer_kinds(settings: StudySettings, pretrained: str | None) -> list[str]:
    """The encoders of the transfer part: random, one denoiser per pretraining budget, and the weights file's."""
    return ["random", *(pretrain_kind(b) for b in settings.pretrain_budgets)] + (["pretrained"] if pretrained else [])


def transfer_results(
    cache: RunCache, settings: StudySettings, kinds: Sequence[str], n_resamples: int = 2000
) -> dict[str, Any]:
    """AUC (primary) and balanced accuracy of every encoder x evaluation x set size, and each pretrained - random.

    Raises:
        ValueError: when compared runs differ in steps, fine-tuning protocol or test subjects.
    """
    rows, contrasts = [], []
    others = [k for k in kinds if k != "random"]
    level = bonferroni_level(4 * max(1, len(others)))
    budgets = {pretrain_kind(b): b for b in settings.pretrain_budgets}
    for size in ("small", "large"):
        floor = cache.get("transfer", f"floor/{size}")
        if floor is not None:
            prob, labels = np.array([floor["prob"]]), np.array(floor["labels"])
            rows.append(_transfer_row("logistic floor", "voxels", size, prob, labels, n_resamples, 0.95))
        for evaluation in ("probe", "finetune"):
            found, runs_of = {}, {}
            for kind in kinds:
                name = f"{evaluation}/{kind}/{size}/seed"
                runs = [cache.get("transfer", f"{name}{s}") for s in range(settings.transfer_seeds)]
                if any(r is None for r in runs):
                    continue
                runs_of[kind] = runs
                found[kind] = _auc_table(runs)
                row = _transfer_row(kind, evaluation, size, *found[kind], n_resamples, 0.95)
                row["seconds"] = float(np.mean([r["seconds"] for r in runs]))
                row["steps"] = runs[0]["steps"]
                rows.append(row)
            check_equal_budgets(runs_of, ("steps", "protocol") if evaluation == "finetune" else ("steps",))
            for kind in others:
                if kind in found and "random" in found:
                    diff = _powered(
                        _auc_difference(found[kind], found["random"], level, n_resamples, settings.margin_auc),
                        MIN_SEEDS_TRANSFER,
                    )
                    contrasts.append(
                        {
                            "encoder": kind,
                            "pretrain_budget": budgets.get(kind),
                            "evaluation": evaluation,
                            "size": size,
                            "diff_auc": diff,
                            "answer": _ANSWERS[diff["verdict"]],
                        }
                    )
    return {"rows": rows, "contrasts": contrasts, "level": level}


def _auc_difference(
    pretrained: tuple[np.ndarray, np.ndarray],
    random: tuple[np.ndarray, np.ndarray],
    level: float,
    n_resamples: int,
    margin: float,
) -> dict[str, Any]:
    """AUC of ``pretrained`` minus AUC of ``random``, paired by seed and test subject: intervals and verdict."""
    (prob_a, labels), (prob_b, _) = pretrained, random
    if prob_a.shape != prob_b.shape:
        raise ValueError(f"paired AUC tables must have one shape, got {prob_a.shape} and {prob_b.shape}")
    stat_a, stat_b = _auc_stat(prob_a, labels), _auc_stat(prob_b, labels)
    interval = bootstrap_interval(lambda r, c: stat_a(r, c) - stat_b(r, c), *prob_a.shape, level, n_resamples)
    every = np.arange(labels.size)
    per_seed = np.array([stat_a([s], every) - stat_b([s], every) for s in range(prob_a.shape[0])])
    return contrast_summary(per_seed, interval, margin)


def _transfer_row(
    encoder: str, evaluation: str, size: str, prob: np.ndarray, labels: np.ndarray, n_resamples: int, level: float
) -> dict[str, Any]:
    n_seeds, n_items = prob.shape
    return {
        "encoder": encoder,
        "evaluation": evaluation,
        "size": size,
        "seeds": n_seeds,
        "auc": list(bootstrap(_auc_stat(prob, labels), n_seeds, n_items, level, n_resamples)),
        "balanced_accuracy": list(bootstrap(_bacc_stat(prob, labels), n_seeds, n_items, level, n_resamples)),
    }


def _plain_interval(values: Sequence[float], digits: int = 2) -> str:
    est, low, high = values
    return f"{est:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _pair(values: Sequence[float], digits: int = 2) -> str:
    low, high = values
    return f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def _contrast_cell(diff: Mapping[str, Any] | None, digits: int = 2) -> str:
    """``estimate t [low, high]`` of a contrast (the t interval over seeds), or ``-``."""
    if not diff:
        return "-"
    return f"{diff['estimate']:+.{digits}f} {_pair(diff['t_interval'], digits)}"


def _verdict_cell(diff: Mapping[str, Any]) -> str:
    verdict = str(diff["verdict"])
    if diff["underpowered"]:
        verdict += f" (underpowered: {diff['seeds']} of {diff['required_seeds']} seeds)"
    if diff["bootstrap"]["near_bound"]:
        verdict += " (bootstrap bound within Monte-Carlo error of 0)"
    return verdict


def _rule(level: float, contrasts: int, margin: str, seeds: int, required: int, what: str) -> str:
    """The verdict rule, the level, the seeds and the margin, as printed above every table of verdicts."""
    power = (
        f"**Underpowered: {seeds} seeds, fewer than the {required} a verdict needs; read every verdict below as "
        "provisional.** "
        if seeds < required
        else f"{seeds} seeds (at least the {required} required). "
    )
    return (
        f"{power}Intervals at {level:.2%} (Bonferroni over {contrasts} contrasts): *t* is a Student t interval on the "
        f"{seeds} per-seed mean differences (df = {seeds - 1}), *bootstrap* resamples seeds and "
        f"{what} (two levels). Rule fixed before the run: *better*/*worse* when both intervals exclude 0; "
        f"*equivalent* when the TOST over seeds at α = {1 - level:.2%} rejects a difference as large as the margin "
        f"±{margin} (fixed in the settings before the run) and the bootstrap interval lies inside it; else "
        "*inconclusive*."
    )


def _arms_markdown(rows: Sequence[Mapping[str, Any]], level: float, settings: StudySettings) -> list[str]:
    table = []
    for row in rows:
        if row["arm"] == "baseline":
            table.append(["baseline", row["psnr_brain"], *["-"] * 7, row["seconds_per_step"], row["cpu_seconds"]])
            continue
        diff = row["diff_psnr_brain"]
        table.append(
            [
                row["arm"],
                row["psnr_brain"],
                _contrast_cell(diff),
                _pair(diff["bootstrap_interval"]),
                f"{diff['tost_p']:.3f}",
                _verdict_cell(diff),
                _contrast_cell(row["diff_psnr_volume"]),
                _contrast_cell(row["diff_ssim_brain"], 3),
                _contrast_cell(row.get("diff_psnr_brain_generated")),
                row["seconds_per_step"],
                row["cpu_seconds"],
            ]
        )
    headers = [
        "arm",
        "PSNR brain (dB)",
        "Δ PSNR brain, t",
        "bootstrap",
        "TOST p",
        "verdict",
        "Δ PSNR volume, t",
        "Δ SSIM brain, t",
        "Δ PSNR brain, generated heads, t",
        "s/step",
        "CPU s per run",
    ]
    margins = f"{settings.margin_psnr_db:g} dB for PSNR, {settings.margin_ssim:g} for SSIM"
    return [
        _rule(level, len(rows) - 1, margins, settings.seeds, MIN_SEEDS_ARMS, "volumes")
        + f" The verdict is on PSNR in the brain. Every arm trained {rows[0]['steps']} steps (checked equal); s/step "
        "(wall) and CPU seconds (training, all threads) are medians over the seeds.",
        "",
        markdown_table(headers, table, digits=[2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 0]),
        *_monte_carlo(rows, "diff_psnr_brain", "arm"),
    ]


def _monte_carlo(rows: Sequence[Mapping[str, Any]], key: str, name: str) -> list[str]:
    """A note for each verdict whose bootstrap bound sits within Monte-Carlo error of 0."""
    lines = []
    for row in rows:
        diff = row.get(key)
        if diff and diff["bootstrap"]["near_bound"]:
            boot = diff["bootstrap"]
            lines.append(
                f"- `{row[name]}`: {boot['zero_tail']:.4f} ± {boot['zero_tail_se']:.4f} of the {boot['resamples']} "
                f"bootstrap draws lie beyond 0 (the interval's tail is {(1 - diff['level']) / 2:.4f}); its bounds "
                f"carry a Monte-Carlo error of ± {boot['bound_se'][0]:.3f} / ± {boot['bound_se'][1]:.3f}."
            )
    return ["", "Bootstrap verdicts near a bound (Monte-Carlo error):", "", *lines] if lines else []


def _answers(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    for question in dict.fromkeys(r["question"] for r in rows if r["arm"] != "baseline"):
        parts = [
            f"`{r['arm']}` {_verdict_cell(r['diff_psnr_brain'])} ({_contrast_cell(r['diff_psnr_brain'])} dB, "
            f"bootstrap {_pair(r['diff_psnr_brain']['bootstrap_interval'])})"
            for r in rows
            if r["question"] == question
        ]
        lines.append(f"- **{question}**: " + "; ".join(parts) + ".")
    return lines


def _ranking(short: Sequence[Mapping[str, Any]], longer: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    names = [r["arm"] for r in longer]
    order_short = sorted(names, key=lambda a: -next(r["psnr_brain"] for r in short if r["arm"] == a))
    order_long = sorted(names, key=lambda a: -next(r["psnr_brain"] for r in longer if r["arm"] == a))
    return {"short": order_short, "long": order_long, "holds": order_short == order_long}


def _figure(rows: Sequence[Mapping[str, Any]], path: Path, level: float, margin: float) -> Path | None:
    others = [r for r in rows if r["arm"] != "baseline"]
    if not others:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(others) + 1.2))
    for k, row in enumerate(others):
        diff = row["diff_psnr_brain"]
        est = diff["estimate"]
        for offset, key, color in ((-0.15, "t_interval", "k"), (0.15, "bootstrap_interval", "grey")):
            low, high = diff[key]
            ax.errorbar(est, k + offset, xerr=[[est - low], [high - est]], fmt="o", color=color, capsize=3)
    ax.axvline(0.0, color="grey", lw=1)
    ax.axvspan(-margin, margin, color="grey", alpha=0.2)
    ax.set_yticks(range(len(others)), [r["arm"] for r in others])
    ax.invert_yaxis()
    ax.set_xlabel(f"PSNR in the brain, arm - baseline (dB), {level:.1%} t (black) and bootstrap (grey) intervals")
    return save_figure(fig, path)


def _transfer_markdown(transfer: Mapping[str, Any], settings: StudySettings, pretrained: str | None) -> list[str]:
    table = [
        [r["encoder"], r["evaluation"], r["size"], _plain_interval(r["auc"]), _plain_interval(r["balanced_accuracy"])]
        for r in transfer["rows"]
    ]
    contrasts = transfer["contrasts"]
    lines = [
        "Every encoder, random or pretrained, was fine-tuned by the same rule (checked equal in every run): batch-norm "
        "statistics re-estimated on the labelled set, encoder learning rate 0.1x the head's, the same steps.",
        "",
        markdown_table(["encoder", "evaluation", "labelled set", "AUC", "balanced accuracy"], table, align="lllrr"),
        "",
        "Each pretrained encoder minus the random one (pretraining budget 0), AUC. "
        + _rule(
            transfer["level"],
            len(contrasts),
            f"{settings.margin_auc:g} AUC",
            settings.transfer_seeds,
            MIN_SEEDS_TRANSFER,
            "test subjects",
        ),
        "",
        markdown_table(
            [
                "encoder",
                "pretraining budget",
                "evaluation",
                "labelled set",
                "Δ AUC, t",
                "bootstrap",
                "TOST p",
                "answer",
            ],
            [
                [
                    c["encoder"],
                    "-" if c["pretrain_budget"] is None else f"{c['pretrain_budget']:g}x",
                    c["evaluation"],
                    c["size"],
                    _contrast_cell(c["diff_auc"], 3),
                    _pair(c["diff_auc"]["bootstrap_interval"], 3),
                    f"{c['diff_auc']['tost_p']:.3f}",
                    _verdict_cell({**c["diff_auc"], "verdict": c["answer"]}),
                ]
                for c in contrasts
            ],
            align="lllllrrl",
        ),
        *_monte_carlo(
            [{**c, "name": f"{c['encoder']} {c['evaluation']} {c['size']}"} for c in contrasts], "diff_auc", "name"
        ),
    ]
    if not pretrained:
        lines += ["", "Pretrained weights (3D-ResNets / MedicalNet): skipped, no file given (`--pretrained PATH`)."]
    return lines


def write_report(
    out: Path,
    cache: RunCache,
    settings: StudySettings,
    recipe: Mapping[str, Any],
    parts: Sequence[str],
    pretrained: str | None,
    command: str,
    minutes: float,
) -> dict[str, Any]:
    """Compute every interval from the cached runs and write ``results.json``, ``report.md`` and the figures.

    Returns:
        The results, with ``"report"``: the path of ``report.md``.
    """
    level = bonferroni_level(len(ARMS) - 1)
    arms = arms_results(cache, settings, "arms", settings.bootstrap) if "arms" in parts else []
    longer = arms_results(cache, settings, "longer", settings.bootstrap) if "longer" in parts else []
    kinds = transfer_kinds(settings, pretrained)
    transfer = transfer_results(cache, settings, kinds, settings.bootstrap) if "transfer" in parts else {}
    results = {
        "command": command,
        "machine": machine_info(),
        "minutes": minutes,
        "settings": settings.as_dict(),
        "required_seeds": {"arms": MIN_SEEDS_ARMS, "transfer": MIN_SEEDS_TRANSFER},
        "recipe": recipe,
        "arms": arms,
        "longer": longer,
        "ranking": _ranking(arms, longer) if arms and longer else None,
        "transfer": transfer,
    }
    lines = [
        "# Study: the notes' questions and the transfer hypothesis",
        "",
        f"Command: `{command}` ({minutes:.1f} min this call; cached runs are not re-run). Settings: "
        f"{settings.seeds} seeds per arm, {settings.transfer_seeds} per transfer encoder, {settings.spacing:g} mm "
        f"volumes, {settings.steps} steps of {settings.patches_per_step} x {settings.patch}³ patches per arm, "
        f"Gaussian noise σ {settings.noise_level:g}/255. Equivalence margins fixed before the run: "
        f"{settings.margin_psnr_db:g} dB PSNR, {settings.margin_ssim:g} SSIM, {settings.margin_auc:g} AUC.",
        "",
    ]
    if arms:
        figure = _figure(arms, out / "arms.png", level, settings.margin_psnr_db)
        lines += ["## (a) The notes' questions", "", *_answers(arms), "", *_arms_markdown(arms, level, settings), ""]
        lines += [f"![differences]({figure.name})", ""] if figure else []
    if longer and results["ranking"]:
        ranking = results["ranking"]
        lines += [
            f"## Does the ranking hold at {settings.longer_factor}x the budget?",
            "",
            f"Best to worst PSNR in the brain at {settings.steps} steps: {', '.join(ranking['short'])}; at "
            f"{settings.steps * settings.longer_factor} steps: {', '.join(ranking['long'])}. "
            + ("The ranking of the means holds" if ranking["holds"] else "The ranking of the means changes")
            + " (an order of means, not a test: read the intervals below).",
            "",
            *_arms_markdown(longer, bonferroni_level(len(longer) - 1), settings),
            "",
        ]
    if transfer:
        lines += ["## (b) Does denoising pretraining help the classifier?", ""]
        lines += _transfer_markdown(transfer, settings, pretrained) + [""]
    report = out / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return {**results, "report": str(report)}

"""The demo's ``report.md``: one small function per section, from what :func:`pipeline.demo.run.run_demo` measured.

Nothing here measures anything: every figure comes from ``results`` (the dict written to ``results.json``), the test
volumes the scores were computed on, and the stage timer. The building blocks (tables, figures, the Markdown document)
are :mod:`pipeline.evaluation.report`'s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.evaluation import report as rp
from pipeline.utils.files import atomic_path

if TYPE_CHECKING:
    from pipeline.demo.run import StageTimer

__all__ = ["append_totals", "best_point", "denoiser_summary", "write_report"]

#: Row titles of the denoising table.
_TITLES = {
    "noisy": "Noisy input (Gaussian, sigma 15/255)",
    "gaussian": "Gaussian filter (best sigma)",
    "median": "Median filter",
    "nl_means": "Non-local means (scikit-image)",
    "curvature_flow": "Curvature flow (SimpleITK)",
    "tv": "Total variation",
    "bm4d": "BM4D",
    "resunet3d": "**ResUnet3D** (inference.yaml)",
}

#: Column titles of the per-volume table.
_SHORT = {"noisy": "noisy", "gaussian": "Gaussian", "median": "median", "nl_means": "NLM", "resunet3d": "ResUnet3D"}

_INITS = (("scratch", "ResNet from scratch"), ("denoiser", "ResNet from the denoiser's encoder"))


def best_point(series: Sequence[tuple[int, float]]) -> tuple[int, float] | tuple[None, float]:
    """The ``(step, value)`` of a curve with the largest value; ``(None, nan)`` for an empty curve."""
    if not series:
        return None, float("nan")
    return max(series, key=lambda point: point[1])


def denoiser_summary(settings: Mapping[str, Any], curves: Mapping[str, Any]) -> str:
    """One paragraph: the denoiser's architecture, size, budget and best validation epoch."""
    from networks import ResUnet3D

    net = dict(settings["denoiser"])
    parameters = sum(p.numel() for p in ResUnet3D(**net).parameters() if p.requires_grad)
    epoch, best = best_point(curves["denoiser"].get("psnr_brain", []))
    noisy = dict(curves["denoiser"].get("psnr_brain_noisy", [])).get(epoch, float("nan"))
    iterations = len(curves["denoiser"].get("train_loss", []))
    arguments = ", ".join(f"{k}={v}" for k, v in net.items())
    return (
        f"ResUnet3D({arguments}): {parameters / 1e6:.2f} M trainable parameters, {settings['denoise_epochs']} epochs "
        f"({iterations} iterations of {settings['batch_size']} volumes x {settings['num_samples']} random "
        f"{settings['patch_size']}^3 patches inside the brain), Adam lr {settings['learning_rate']:g} with a cosine "
        f"schedule, L1 loss. Its weights are those of the best validation epoch ({epoch}: PSNR in the brain "
        f"{best:.2f} dB vs. {noisy:.2f} dB for the noisy input)."
    )


def _run_paragraph(results: Mapping[str, Any]) -> str:
    machine = results["machine"]
    return (
        f"Run started {results['started']} on {machine['logical_cpus']} CPU(s) ({machine['cpu_description']}, torch "
        f"{machine['torch']} with {machine['torch_threads']} threads, MONAI {machine['monai']}, device "
        f"`{machine['device']}`). Every number and figure below was produced by this run "
        f"(`python -m pipeline.demo`); all of them are also in `results.json`."
    )


def _data_section(doc: rp.Report, cohort: Mapping[str, Any]) -> None:
    parts = cohort["splits"]
    doc.heading("Data")
    doc.paragraph(
        f"{cohort['subjects']} synthetic subjects from nilearn's MNI152 template (`pipeline.data.cohort`), "
        f"{'x'.join(map(str, cohort['shape']))} voxels at {cohort['spacing_mm']:g} mm, half with simulated atrophy "
        f"(label 1). Subject-level split from `subjects.csv`: {len(parts['train'])} train, {len(parts['val'])} val, "
        f"{len(parts['test'])} test. The denoiser trained on {len(cohort['denoiser_splits']['train'])} train "
        f"subjects and validated on the other {len(cohort['denoiser_splits']['val'])}; the classifiers "
        f"trained on the train part and chose their best epoch on the val part; the classical filters' parameters "
        f"were tuned on val subjects. **Everything below is scored on the {len(parts['test'])} test subjects, which "
        f"no model or parameter choice saw**: {', '.join(parts['test'])}."
    )


def _denoising_means(doc: rp.Report, denoising: Mapping[str, Any], n_cases: int) -> None:
    rows = []
    for name, entry in denoising.items():
        mean = entry["mean"]
        scores = [mean["psnr_brain"], mean["ssim_brain"], mean["psnr_volume"], mean["ssim_volume"]]
        rows.append(
            [_TITLES.get(name, name), entry["parameter"], *scores, None if name == "noisy" else mean["seconds"]]
        )
    doc.table(
        ["method", "parameter", "PSNR brain (dB)", "SSIM brain", "PSNR volume (dB)", "SSIM volume", "s / volume"],
        rows,
        digits=[0, 0, 2, 4, 2, 4, 2],
        note=(
            f"Means over the {n_cases} test volumes. Intensities divided by each clean scan's robust maximum "
            "(99.5th percentile of its non-zero voxels), data range 1. *brain*: inside the brain mask; *volume*: the "
            "whole "
            "volume, whose zero background inflates the figures. Classical filters: seconds of the filter on the "
            "array; ResUnet3D: seconds per scan through `inference.yaml` (read, preprocess, network, invert to the "
            "scan's space, write NIfTI)."
        ),
    )


def _denoising_per_volume(doc: rp.Report, denoising: Mapping[str, Any], cases: Sequence[Mapping[str, Any]]) -> None:
    per_volume = [
        [case["subject"], *(denoising[n]["per_volume"][i]["psnr_brain"] for n in denoising)]
        for i, case in enumerate(cases)
    ]
    doc.table(
        ["test subject", *(_SHORT.get(n, n) for n in denoising)],
        per_volume,
        note="PSNR in the brain mask (dB) per test volume.",
    )


def _denoising_figures(
    doc: rp.Report, cases: Sequence[Mapping[str, Any]], denoised: Mapping[str, np.ndarray], figures: Path
) -> None:
    for case in cases:
        subject = case["subject"]
        path = rp.triplanar_figure(
            {"noisy": case["noisy"], "ResUnet3D": denoised[subject], "clean": case["clean"]},
            figures / f"triplanar_{subject}.png",
            title=f"{subject} (held out)",
            error_of=("ResUnet3D", "clean"),
            mask=case["mask"],
            vmax=1.0,
        )
        doc.figure(path, f"{subject}: noisy input, ResUnet3D output, clean reference and |error|")


def _with_interval(value: float, interval: Sequence[float] | None) -> str:
    """``0.833 [0.500, 1.000]`` (``n/a`` for a missing value; the interval only when there is one)."""
    text = rp.format_number(value, 3)
    if interval is None or value is None:
        return text
    return f"{text} [{rp.format_number(interval[0], 3)}, {rp.format_number(interval[1], 3)}]"


def _classification_section(doc: rp.Report, results: Mapping[str, Any]) -> None:
    settings, classification, curves = results["settings"], results["classification"], results["curves"]
    heldout = results["heldout"]
    doc.heading("Classification: atrophy vs. control")
    rows = []
    for name, title in (*_INITS, ("logistic_floor", "Logistic regression (floor)")):
        scores = classification[name]
        epoch, best_val = best_point(curves.get(f"classifier_{name}", {}).get("balanced_accuracy", []))
        rows.append(
            [
                title,
                _with_interval(scores["balanced_accuracy"], scores.get("balanced_accuracy_interval")),
                _with_interval(scores["auc"], scores.get("auc_interval")),
                _with_interval(scores["sensitivity"]["value"], scores["sensitivity"]["interval"]),
                _with_interval(scores["specificity"]["value"], scores["specificity"]["interval"]),
                best_val if epoch is not None else None,
                epoch,
            ]
        )
    n, patients = len(heldout["subjects"]), heldout["patients"]
    doc.table(
        ["classifier", "balanced accuracy", "ROC AUC", "sensitivity", "specificity", "best val bal. acc.", "epoch"],
        rows,
        digits=[0, 0, 0, 0, 0, 3, 0],
        note=(
            f"Scored on a separate held-out cohort of {n} subjects ({patients} with atrophy), the same simulation with "
            f"seed {heldout['seed']} and IDs `{heldout['subjects'][0]}`..., clean scans classified through "
            "`inference_classifier.yaml` with each run's best-validation weights; the guard checked that no held-out "
            "subject shares an ID or an image (a hash of its voxels) with the training cohort. Brackets: 95 % "
            "intervals, a percentile bootstrap over the held-out subjects (balanced accuracy, AUC) and Wilson "
            "intervals (sensitivity, specificity). Both networks: same split, "
            f"{settings['classifier_epochs']} epochs, batch {settings['classifier_batch_size']}, AdamW lr "
            f"{settings['classifier_learning_rate']:g}, same augmentation; the epoch is the one with the best "
            "balanced accuracy on the cohort's val subjects. Floor: logistic regression on 8 mm block means of the "
            f"clean volumes (the model of `pipeline.data.cohort.logistic_baseline`), fitted on the "
            f"{len(heldout['floor_fitted_on'])} train and val subjects the networks learnt from."
        ),
    )


def _curves_section(doc: rp.Report, curves: Mapping[str, Any], out: Path, figures: Path) -> None:
    doc.heading("Training curves")
    den = curves["denoiser"]
    inits = [init for init, _ in _INITS]
    panels = {
        "denoiser: training loss (L1)": {"loss": den.get("train_loss", [])},
        "denoiser: validation PSNR in the brain (dB)": {
            "ResUnet3D": den.get("psnr_brain", []),
            "noisy input": den.get("psnr_brain_noisy", []),
        },
        "classifiers: training loss (cross-entropy)": {
            init: curves[f"classifier_{init}"].get("train_loss", []) for init in inits
        },
        "classifiers: validation balanced accuracy": {
            init: curves[f"classifier_{init}"].get("balanced_accuracy", []) for init in inits
        },
    }
    path = rp.curves_figure(
        panels,
        figures / "training_curves.png",
        xlabels={
            "denoiser: training loss (L1)": "iteration",
            "classifiers: training loss (cross-entropy)": "iteration",
        },
    )
    doc.figure(path, "Training curves read back from the runs' TensorBoard event files")
    doc.paragraph(f"All runs, with images of each validation: `tensorboard --logdir {out}`.")


def _timings_section(doc: rp.Report, timer: StageTimer, settings: Mapping[str, Any]) -> None:
    doc.heading("Stage timings")
    doc.table(
        ["stage", "wall (s)", "CPU (s)", "note"],
        [[r.name, r.wall_s, r.cpu_s, r.note or ""] for r in timer.records],
        digits=[0, 1, 1, 0],
        align="lrrl",
        note=(
            "CPU: CPU seconds of this process over all its threads. On a shared machine the wall clock also counts "
            "the time other processes held the cores."
        ),
    )
    doc.paragraph(f"Settings: `{json.dumps(settings)}`")


def write_report(
    out: Path,
    results: Mapping[str, Any],
    cases: Sequence[Mapping[str, Any]],
    denoised: Mapping[str, np.ndarray],
    timer: StageTimer,
) -> Path:
    """Write ``<out>/report.md`` and its figures under ``<out>/figures``.

    Args:
        out: the demo's output folder.
        results: the demo's results (``results.json`` without the stage timings).
        cases: the test volumes (``subject``, ``noisy``, ``clean``, ``mask`` on the robust-maximum scale), in the
            order of the per-volume scores.
        denoised: the network's output per test subject, on the same scale.
        timer: the stages timed so far (the report stage itself is still running).

    Returns:
        The report's path.
    """
    settings = results["settings"]
    figures = out / "figures"
    doc = rp.Report(out / "report.md", "resUnet3D demo report")
    doc.paragraph(_run_paragraph(results))
    _data_section(doc, results["cohort"])
    doc.heading("Denoising: Gaussian noise, sigma 15/255")
    doc.paragraph(denoiser_summary(settings, results["curves"]))
    _denoising_means(doc, results["denoising"], len(cases))
    _denoising_per_volume(doc, results["denoising"], cases)
    _denoising_figures(doc, cases[: settings["figure_subjects"]], denoised, figures)
    _classification_section(doc, results)
    _curves_section(doc, results["curves"], out, figures)
    _timings_section(doc, timer, settings)
    return doc.write()


def append_totals(report: Path, timer: StageTimer) -> None:
    """Add the run's total wall and CPU time, report stage included, as the report's last line.

    Args:
        report: ``report.md``.
        timer: the demo's stage timer, after its last stage.
    """
    wall, cpu = timer.total()
    text = report.read_text(encoding="utf-8")
    line = f"**Total: {wall:.0f} s wall ({wall / 60:.1f} min), {cpu:.0f} s CPU**, report stage included.\n"
    with atomic_path(report) as tmp:
        tmp.write_text(text + "\n" + line, encoding="utf-8")

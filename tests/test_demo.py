from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest

from pipeline.demo import run as demo
from pipeline.demo.run import QUICK, DemoSettings, StageTimer, main, run_demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REFERENCE = Path(__file__).parent / "data" / "demo_quick_reference.json"
#: How far each number may move between CPUs (kernels sum in another order); on the CPU that wrote the reference a
#: refactor that changes no computation reproduces it to float precision. The classical filters run numpy/scipy
#: only; the network's figures go through training, where kernel rounding compounds.
REFERENCE_TOLERANCE = {"classical": 1e-3, "resunet3d": 0.05, "prob_patient": 0.01}
NUMBER = re.compile(r"^-?\d+\.\d+$")


def reference_numbers(results: dict) -> dict[str, float]:
    """The demo's numbers that a refactor must not change: every method's per-volume quality, every probability."""
    numbers = {}
    for method, entry in results["denoising"].items():
        for i, volume in enumerate(entry["per_volume"]):
            numbers.update({f"{method}/{i}/{k}": v for k, v in volume.items() if k != "seconds"})
    for init, entry in results["classification"].items():
        numbers.update({f"{init}/{s}/prob_patient": v["prob_patient"] for s, v in entry["subjects"].items()})
    return numbers


def check_against_reference(results: dict) -> None:
    """Compare with ``tests/data/demo_quick_reference.json``; ``RESUNET3D_WRITE_DEMO_REFERENCE=1`` rewrites it."""
    numbers = reference_numbers(results)
    if os.environ.get("RESUNET3D_WRITE_DEMO_REFERENCE") == "1":
        REFERENCE.write_text(json.dumps({"machine": results["machine"], "numbers": numbers}, indent=1) + "\n")
    reference = json.loads(REFERENCE.read_text())["numbers"]
    assert sorted(numbers) == sorted(reference)
    for key, value in reference.items():
        kind = (
            "prob_patient"
            if key.endswith("prob_patient")
            else "resunet3d"
            if key.startswith("resunet3d")
            else "classical"
        )
        assert numbers[key] == pytest.approx(value, abs=REFERENCE_TOLERANCE[kind]), key


def table_rows(text: str, first_header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose first header cell is ``first_header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    results = run_demo(out, QUICK)
    check_against_reference(results)
    report = (out / "report.md").read_text(encoding="utf-8")

    # denoising table: every method on the same test volumes, with numeric scores and timings
    rows = {row[0]: row for row in table_rows(report, "method")}
    assert len(rows) == 5
    for name, row in rows.items():
        assert all(NUMBER.match(cell) for cell in row[2:6]), row
        if not name.startswith("Noisy"):
            assert NUMBER.match(row[6]), row
    assert any("ResUnet3D" in name for name in rows)
    noisy = results["denoising"]["noisy"]["mean"]["psnr_brain"]
    assert float(rows["Noisy input (Gaussian, sigma 15/255)"][2]) == pytest.approx(noisy, abs=0.006)
    # the noise is sigma 15/255 of the clean scan's robust maximum, so the noisy input's PSNR is known
    assert noisy == pytest.approx(24.6, abs=0.4)

    # classification table: both inits with numeric balanced accuracy, and the floor
    rows = table_rows(report, "classifier")
    assert [row[0] for row in rows] == [
        "ResNet from scratch",
        "ResNet from the denoiser's encoder",
        "Logistic regression (floor)",
    ]
    for row in rows:
        value = row[1].split(" [")[0]
        assert NUMBER.match(value) and 0 <= float(value) <= 1, row
    for row in rows:  # every figure (balanced accuracy, AUC, sensitivity, specificity) carries its 95 % interval
        for cell in row[1:5]:
            low, high = (float(x) for x in cell.split(" [")[1].rstrip("]").split(", "))
            assert low <= float(cell.split(" [")[0]) <= high, row
    heldout = results["heldout"]
    assert len(heldout["subjects"]) == QUICK.heldout_subjects
    assert heldout["seed"] != QUICK.seed and not set(heldout["subjects"]) & set(results["cohort"]["splits"]["test"])
    for entry in results["classification"].values():  # the networks and the floor on the same held-out subjects
        assert sorted(entry["subjects"]) == heldout["subjects"] and entry["n"] == QUICK.heldout_subjects
        assert len(entry["balanced_accuracy_interval"]) == 2 and len(entry["auc_interval"]) == 2
    floor = results["classification"]["logistic_floor"]
    assert results["logistic_floor_balanced_accuracy"] == floor["balanced_accuracy"]

    # stage timings cover every stage
    stage_rows = table_rows(report, "stage")
    assert len(stage_rows) == len(results["stages"]) - 1  # the report stage itself is timed after the table
    assert all(NUMBER.match(row[1]) for row in stage_rows)
    assert "**Total:" in report

    # every linked figure exists and is a PNG; the run folders hold TensorBoard events
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(links) == QUICK.figure_subjects + 1
    for link in links:
        assert (out / link).read_bytes()[:8] == PNG_SIGNATURE
    for run in ("denoiser", "classifier_denoiser", "classifier_scratch"):
        assert list((out / "runs" / run).glob("events.out.tfevents.*")), run
    # inference outputs: one denoised scan per test subject and a CSV per classifier
    test = results["cohort"]["splits"]["test"]
    expected = [f"{s}_denoised{suffix}" for s in test for suffix in (".nii.gz", ".json")]  # with the guard's report
    assert sorted(p.name for p in (out / "denoised").iterdir()) == sorted(expected)
    predictions = {p.name for p in (out / "predictions").iterdir()}
    assert predictions == {"classifier_denoiser.csv", "classifier_scratch.csv", "floor.csv"}
    # the denoiser never saw the classifier's val/test subjects, and the test subjects are nobody's training data
    parts = results["cohort"]["splits"]
    seen = set(results["cohort"]["denoiser_splits"]["train"]) | set(results["cohort"]["denoiser_splits"]["val"])
    assert seen <= set(parts["train"])
    assert json.loads((out / "results.json").read_text())["settings"] == QUICK.to_dict()


def test_settings_are_validated():
    with pytest.raises(ValueError, match="subjects must be >= 8"):
        DemoSettings(subjects=6)
    with pytest.raises(ValueError, match="classical must name"):
        DemoSettings(classical=("gaussian", "wiener"))
    with pytest.raises(ValueError, match="denoise_epochs must be >= 1"):
        DemoSettings(denoise_epochs=0)
    with pytest.raises(ValueError, match="learning_rate"):
        DemoSettings(learning_rate=0.0)
    with pytest.raises(ValueError, match="noise_range"):
        DemoSettings(noise_range=(25.0, 5.0))
    with pytest.raises(ValueError, match="noise_range"):
        DemoSettings(noise_range=(5.0, 25.0), fresh_noise=False)  # a folder holds one level
    assert DemoSettings(noise_range=(5.0, 25.0)).to_dict()["noise_range"] == [5.0, 25.0]
    with pytest.raises(ValueError, match="window"):
        DemoSettings(window=4)
    assert DemoSettings().to_dict() == json.loads(json.dumps(DemoSettings().to_dict()))


def test_stage_timer_records_every_stage_even_on_error():
    timer = StageTimer()
    with timer.stage("first") as record:
        record.note = "ok"
    with pytest.raises(RuntimeError), timer.stage("second"):
        raise RuntimeError("boom")
    assert [r.name for r in timer.records] == ["first", "second"]
    assert timer.records[0].note == "ok"
    assert all(r.wall_s >= 0 and r.cpu_s >= 0 for r in timer.records)
    wall, cpu = timer.total()
    assert wall >= sum(r.wall_s for r in timer.records) - 1e-6


def test_output_folder_rules(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not written by the demo"):
        demo._prepare_out(other, QUICK, fresh=False)
    assert main(["--out", str(other), "--quick"]) == 2
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]  # nothing written into the user's folder
    (tmp_path / "file").write_text("x")
    with pytest.raises(demo.OutputFolderError, match="is a file"):
        demo.check_out(tmp_path / "file")

    out = tmp_path / "demo"
    assert demo._prepare_out(out, QUICK, fresh=False) is False  # new folder: nothing to resume
    (out / "models").mkdir()
    (out / "models" / "weights.pt").write_bytes(b"x")
    assert demo._prepare_out(out, QUICK, fresh=False) is True  # same settings: resume, keep outputs
    assert (out / "models" / "weights.pt").exists()
    assert demo._prepare_out(out, QUICK, fresh=True) is False  # --fresh: start over
    assert not (out / "models").exists()
    (out / "models").mkdir()
    other_settings = DemoSettings(subjects=10, spacing=4.0)
    assert demo._prepare_out(out, other_settings, fresh=False) is False  # other settings: start over
    assert not (out / "models").exists()
    marker = json.loads((out / "demo_run.json").read_text())
    assert marker["settings"] == other_settings.to_dict()


def test_the_demo_announces_its_plan_and_duration_for_the_cpu_it_runs_on(caplog):
    from pipeline.utils.precision import HardwareReport

    avx2 = HardwareReport(cpu_model="AMD EPYC 7B12", cpu_kernels="AVX2", cpu_flags=frozenset({"avx2"}), logical_cpus=2)
    with caplog.at_level(logging.INFO, logger="pipeline.demo"):
        lines = demo.announce(demo.DEFAULT, hardware=avx2)
    assert [r.getMessage() for r in caplog.records] == lines
    assert lines[0].startswith("demo: build a 32-subject cohort at 2 mm, train the denoiser for 160 epochs")
    measured = demo._MEASURED_MIN
    assert lines[1].startswith(
        f"expected: about {measured['avx2']:.0f} min on this machine (2 logical CPUs, AVX2 only, no AVX-512)"
    )
    assert f"{measured['avx512']} min with AVX-512, {measured['avx2']} min with AVX2 kernels only" in lines[1]
    assert lines[2].startswith("CPU: AMD EPYC 7B12, 2 logical CPUs, AVX2, no AVX-512")
    assert lines[3].startswith("precision: fp32")
    avx512 = HardwareReport(cpu_kernels="AVX512", cpu_flags=frozenset({"avx2", "avx512f"}), logical_cpus=4)
    expected = demo.announce(demo.DEFAULT, hardware=avx512)[1]
    assert expected.startswith(
        f"expected: about {measured['avx512'] / 2:.0f} min on this machine (4 logical CPUs, AVX-512)"
    )
    assert "about a minute" in demo.announce(QUICK, quick=True, hardware=avx512)[1]


def test_the_demo_runs_its_workflows_in_float32_whatever_auto_would_pick(monkeypatch):
    import pipeline.bundle_run

    seen: dict = {}

    class Workflow:
        def run(self) -> None:
            pass

        def finalize(self) -> None:
            pass

    def create_workflow(configs: list, **kwargs) -> Workflow:
        seen.update(kwargs)
        return Workflow()

    monkeypatch.setattr(pipeline.bundle_run, "create_workflow", create_workflow)
    demo._run_workflow(["common.yaml"], num_epochs=1)
    assert seen["precision"] == "fp32" and seen["num_epochs"] == 1

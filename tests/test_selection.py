"""The training workflows' data choices (pipeline.data.selection) and shared engine pieces (bundle_engine)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from torch.utils.tensorboard import SummaryWriter

from pipeline.data.selection import classifier_splits, denoiser_splits
from pipeline.data.splits import make_splits, save_splits
from pipeline.training.bundle_engine import (
    TrainingLogs,
    checkpoint_saver,
    iteration_loss,
    key_metric,
    other_metrics,
    validation_handlers,
)


def write_csv(folder: Path, splits: dict[str, str]) -> Path:
    """A subjects CSV whose scans exist (empty files), with a split column when ``splits`` gives one."""
    lines = ["subject_id,label,split,path"]
    for i, (subject, split) in enumerate(splits.items()):
        (folder / f"{subject}.nii.gz").write_bytes(b"")
        lines.append(f"{subject},{i % 2},{split},{subject}.nii.gz")
    table = folder / "subjects.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


def items(n: int) -> list[dict]:
    return [{"image": f"n{i}.nii.gz", "label": i % 2, "subject": f"sub-{i:02d}"} for i in range(n)]


def test_the_denoiser_splits_inside_the_classifiers_train_subjects_and_tests_on_its_test(tmp_path):
    parts = {f"sub-{i:02d}": "train" for i in range(6)} | {"sub-06": "val", "sub-07": "test", "sub-08": "test"}
    table = write_csv(tmp_path, parts)
    splits = denoiser_splits(items(10), subjects_csv=table, val_fraction=0.34, seed=1)
    assert set(splits.train) | set(splits.val) == {f"sub-{i:02d}" for i in range(6)}
    assert splits.val and set(splits.test) == {"sub-07", "sub-08"}  # the CSV's val and sub-09 are never used
    drawn = denoiser_splits(items(10), val_fraction=0.2, test_fraction=0.2, seed=1)
    assert drawn == make_splits([i["subject"] for i in items(10)], val_fraction=0.2, test_fraction=0.2, seed=1)
    saved = save_splits(drawn, tmp_path / "splits.json")
    assert denoiser_splits(items(10), splits_file=saved, subjects_csv=table) == drawn  # the file wins


def test_the_classifier_split_is_the_file_then_the_csv_column_then_drawn(tmp_path):
    with_column = [
        dict(item, split="test" if i > 7 else "val" if i > 5 else "train") for i, item in enumerate(items(10))
    ]
    splits = classifier_splits(with_column)
    assert set(splits.test) == {"sub-08", "sub-09"} and set(splits.val) == {"sub-06", "sub-07"}
    drawn = classifier_splits(items(10), val_fraction=0.2, test_fraction=0.2, seed=3)
    assert sorted([*drawn.train, *drawn.val, *drawn.test]) == [f"sub-{i:02d}" for i in range(10)]
    saved = save_splits(drawn, tmp_path / "splits.json")
    assert classifier_splits(with_column, splits_file=saved) == drawn


def test_engine_pieces_follow_the_rank_and_the_trainer_output(tmp_path):
    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    engine = Engine(lambda e, b: {"loss": torch.tensor(0.5)})
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    before = len(engine._event_handlers[Events.ITERATION_COMPLETED])
    TrainingLogs(writer, optimizer).attach(engine)
    assert len(engine._event_handlers[Events.ITERATION_COMPLETED]) > before
    assert float(iteration_loss([{"loss": torch.tensor(2.0)}])) == float(iteration_loss({"loss": torch.tensor(2.0)}))
    metrics = {"a": 1, "b": 2, "confusion_matrix": 3}
    assert key_metric(metrics, "a") == {"a": 1} and other_metrics(metrics, "a", skip=["confusion_matrix"]) == {"b": 2}
    state = {"network": torch.nn.Linear(1, 1)}
    assert checkpoint_saver(ckpt_dir=tmp_path, save_dict=state, interval=1, rank=1) is None
    saver = checkpoint_saver(ckpt_dir=tmp_path, save_dict=state, interval=1, file_prefix="classifier")
    extra = object()
    assert validation_handlers(summary_writer=None, saver=saver, rank=1, extra=[extra]) == [extra]
    on_rank0 = validation_handlers(summary_writer=writer, saver=saver, extra=[extra])
    assert on_rank0[-2:] == [extra, saver] and len(on_rank0) == 4
    with pytest.raises(KeyError):
        key_metric(metrics, "missing")
    writer.close()

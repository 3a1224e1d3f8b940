"""Checkpoints: atomic writes, a full disk leaves the previous checkpoint intact, safe rotation, safe loading."""

from __future__ import annotations

import errno
import pickle

import pytest
import torch
from ignite.engine import Engine, Events

from pipeline.training.checkpoint import (
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    CheckpointError,
    find_last_checkpoint,
    load_checkpoint,
    load_network_state,
    remove_partial_files,
)


def half_then_disk_full(real_save):
    """A ``torch.save`` that writes half of the bytes, then fails like a full disk."""

    def save(obj, f, *args, **kwargs):
        import io

        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        with open(f, "wb") as handle:
            handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    return save


def engine_with_saver(tmp_path, net, **saver_kwargs):
    engine = Engine(lambda e, b: None)
    AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"network": net, "trainer": engine}, **saver_kwargs).attach(
        engine
    )
    return engine


def test_disk_full_mid_write_keeps_the_previous_checkpoint_with_a_clear_error(tmp_path, monkeypatch):
    net = torch.nn.Linear(3, 2)
    saver = AtomicDiskSaver(tmp_path)
    saver({"network": net.state_dict()}, "checkpoint_epoch=1.pt")
    before = (tmp_path / "checkpoint_epoch=1.pt").read_bytes()
    saver.remove("checkpoint_epoch=1.pt")  # ignite asks to rotate the old file out *before* writing the new one
    with torch.no_grad():
        net.weight.add_(1.0)
    monkeypatch.setattr(torch, "save", half_then_disk_full(torch.save))
    with pytest.raises(CheckpointError, match=r"checkpoint_epoch=2\.pt.*No space left on device.*intact"):
        saver({"network": net.state_dict()}, "checkpoint_epoch=2.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt"]  # no partial file, old one kept
    assert (tmp_path / "checkpoint_epoch=1.pt").read_bytes() == before
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "checkpoint_epoch=1.pt")["network"]
    assert not torch.equal(state["weight"], net.weight)


def test_rotation_deletes_the_old_file_only_after_the_new_one_is_complete(tmp_path, monkeypatch):
    net = torch.nn.Linear(2, 2)
    engine = engine_with_saver(tmp_path, net, save_interval=1, n_saved=1)
    # the disk fills up after the saver wrote epoch 2: the write of epoch 3 fails
    engine.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda e: monkeypatch.setattr(
        torch, "save", half_then_disk_full(torch.save)))  # fmt: skip
    with pytest.raises(CheckpointError, match=r"checkpoint_epoch=3\.pt"):
        engine.run([0, 1], max_epochs=4)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_epoch=2.pt"]  # stock ignite would have deleted it
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoint_epoch=2.pt")["trainer"]["iteration"] == 4


def test_interval_saver_rotates_and_saves_the_last_epoch(tmp_path):
    engine = engine_with_saver(tmp_path, torch.nn.Linear(2, 2), save_interval=2, n_saved=2)
    engine.run([0, 1], max_epochs=7)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["checkpoint_epoch=6.pt", "checkpoint_epoch=7.pt"]
    assert find_last_checkpoint(tmp_path).name == "checkpoint_epoch=7.pt"
    assert not list(tmp_path.glob(".*"))


def test_best_metric_saver_keeps_its_record_across_a_resume(tmp_path):
    net = torch.nn.Linear(2, 2)
    scores = iter([0.5, 0.9, 0.7])

    def evaluator():
        engine = Engine(lambda e, b: None)

        @engine.on(Events.EPOCH_COMPLETED)
        def score(e):
            e.state.metrics["acc"] = next(scores)

        return engine

    first = evaluator()
    saver = AtomicCheckpointSaver(str(tmp_path), {"network": net}, save_key_metric=True, key_metric_name="acc",
                                  key_metric_filename="model.pt")  # fmt: skip
    saver.attach(first)
    first.run([0], max_epochs=2)  # 0.5 then 0.9 -> model.pt holds the 0.9 weights
    best = (tmp_path / "model.pt").read_bytes()
    state = saver.state_dict()

    second = evaluator()
    resumed = AtomicCheckpointSaver(str(tmp_path), {"network": net}, save_key_metric=True, key_metric_name="acc",
                                    key_metric_filename="model.pt")  # fmt: skip
    resumed.load_state_dict(state)
    resumed.attach(second)
    with torch.no_grad():
        net.weight.add_(1.0)
    second.run([0], max_epochs=1)  # 0.7 < 0.9: model.pt must not be overwritten
    assert (tmp_path / "model.pt").read_bytes() == best
    assert set(load_network_state(tmp_path / "model.pt")) == {"weight", "bias"}


def test_find_last_checkpoint_orders_numerically_and_ignores_partial_files(tmp_path):
    for name in ("checkpoint_epoch=9.pt", "checkpoint_epoch=10.pt", ".checkpoint_epoch=11.abc.part.pt", "model.pt"):
        (tmp_path / name).write_bytes(b"x")
    assert find_last_checkpoint(tmp_path).name == "checkpoint_epoch=10.pt"
    assert [p.name for p in remove_partial_files(tmp_path)] == [".checkpoint_epoch=11.abc.part.pt"]
    assert find_last_checkpoint(tmp_path / "missing") is None


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_load_refuses_truncated_files_and_pickled_code(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"network": {"w": torch.ones(2)}}, good)
    assert torch.equal(load_network_state(good)["w"], torch.ones(2))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="truncated.pt.*cannot be loaded safely"):
        load_checkpoint(truncated)
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as handle:
        pickle.dump({"network": Payload()}, handle)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_stock_savers_still_lose_every_checkpoint_on_a_full_disk(tmp_path, monkeypatch):
    """Still broken upstream? MONAI 1.6.1's ``CheckpointSaver`` writes in place (``DiskSaver(atomic=False)``) and
    ignite's ``Checkpoint`` deletes the old file before writing the new one. If this test fails, MONAI/ignite fixed
    both and :class:`AtomicDiskSaver` can be dropped."""
    from monai.handlers import CheckpointSaver

    net = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    CheckpointSaver(
        save_dir=str(tmp_path), save_dict={"network": net, "trainer": engine}, save_interval=1, n_saved=1
    ).attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda e: monkeypatch.setattr(
        torch, "save", half_then_disk_full(torch.save)))  # fmt: skip
    with pytest.raises(OSError, match="No space left"):
        engine.run([0, 1], max_epochs=4)
    monkeypatch.undo()
    left = sorted(tmp_path.iterdir())
    assert [p.name for p in left] == ["checkpoint_epoch=3.pt"]  # epoch 2 was deleted before the failing write
    with pytest.raises(CheckpointError):
        load_checkpoint(left[0])  # ... which left a truncated file under the final name

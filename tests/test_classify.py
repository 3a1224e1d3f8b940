"""Encoder -> classifier fine-tuning: initialisation switch, freezing, gradual unfreezing, leakage guard, CSV."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from ignite.engine import Engine

from networks import ResUnet3D, freeze_until
from pipeline.data.splits import LeakageError
from pipeline.training.classify import build_classifier, check_denoiser_leakage, finetune_classifier, predict_classifier
from pipeline.training.handlers import GradualUnfreeze
from pipeline.training.optim import build_optimizer
from pipeline.training.runinfo import write_run_info
from pipeline.utils.seed import seed_everything

SMALL = {"model_depth": 10, "block_inplanes": (4, 8, 16, 32)}


def separable(n: int, seed: int, prefix: str) -> list[dict]:
    """Class 1 has a bright cube in one corner, class 0 in the opposite corner; 16^3 with noise."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        label = i % 2
        image = 0.1 * torch.rand(1, 16, 16, 16, generator=g)
        if label:
            image[:, 2:8, 2:8, 2:8] += 0.8
        else:
            image[:, 8:14, 8:14, 8:14] += 0.8
        items.append({"image": image, "label": label, "subject": f"{prefix}{i:02d}"})
    return items


def small_unet() -> ResUnet3D:
    seed_everything(0)
    return ResUnet3D(levels=2, **SMALL)


def test_classifier_reaches_perfect_training_accuracy_and_writes_predictions(tmp_path):
    seed_everything(0)
    net = build_classifier("scratch", num_classes=2, **SMALL)
    train, val, test = separable(8, 0, "tr"), separable(4, 1, "va"), separable(4, 2, "te")
    result = finetune_classifier(
        train, val, net, tmp_path, test_data=test, max_epochs=8, batch_size=4, lr=1e-2, scheduler="none",
        checkpoint_every=8, progress=False,
    )  # fmt: skip
    metrics = predict_classifier(net, train, 2, tmp_path / "train.csv", device="cpu")
    assert metrics["accuracy"] == 1.0 and metrics["balanced_accuracy"] == 1.0 and metrics["auc"] == 1.0
    assert metrics["confusion_matrix"] == [[4, 0], [0, 4]]
    assert result.best_checkpoint == tmp_path / "model.pt"
    with open(tmp_path / "predictions_test.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["subject"] for r in rows] == [f"te{i:02d}" for i in range(4)]
    assert set(rows[0]) == {"subject", "label", "prediction", "prob_0", "prob_1"}
    assert all(abs(float(r["prob_0"]) + float(r["prob_1"]) - 1) < 1e-5 for r in rows)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["class_weights"] == [1.0, 1.0] and info["test_subjects"] == [f"te{i:02d}" for i in range(4)]
    assert set(info["test_metrics"]) >= {"accuracy", "balanced_accuracy", "auc", "confusion_matrix"}
    assert (tmp_path / "predictions_val.csv").is_file()
    from pipeline.inference.infer import load_weights
    from pipeline.runtime.model_card import build_network, read_model_card

    card = read_model_card(tmp_path / "model.pt")  # model.json: what inference needs, beside the weights
    assert card["class_names"] == ["0", "1"] and card["model_card"]["task"] == "classify"
    load_weights(build_network(card), tmp_path / "model.pt")  # rebuilds exactly the trained classifier


def test_init_switch_copies_the_denoiser_encoder(tmp_path):
    unet = small_unet()
    from_object = build_classifier("denoiser", num_classes=3, denoiser=unet)
    torch.save(unet.state_dict(), tmp_path / "model.pt")
    from_file = build_classifier(
        "denoiser", num_classes=3, path=tmp_path / "model.pt", denoiser_kwargs={"levels": 2, **SMALL}
    )
    for name, tensor in unet.encoder.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(from_object.state_dict()[name], tensor), name
            assert torch.equal(from_file.state_dict()[name], tensor), name
    assert from_object.fc.out_features == 3
    scratch = build_classifier("scratch", num_classes=3, **SMALL)
    assert not torch.equal(scratch.conv1.weight, unet.encoder.conv1.weight)
    with pytest.raises(ValueError, match=r"init must be one of \['scratch', 'denoiser', 'pretrained'\]"):
        build_classifier("imagenet")
    with pytest.raises(ValueError, match="path"):
        build_classifier("pretrained", **SMALL)


def test_pretrained_init_loads_resnet_weights(tmp_path):
    source = build_classifier("scratch", num_classes=700, **SMALL)  # a 'video' checkpoint with its own head
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "r3d.pth")
    net = build_classifier("pretrained", num_classes=2, path=tmp_path / "r3d.pth", **SMALL)
    assert torch.equal(net.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    assert net.fc.out_features == 2


def test_frozen_stages_and_their_batch_norm_statistics_do_not_move(tmp_path):
    seed_everything(0)
    net = build_classifier("denoiser", num_classes=2, denoiser=small_unet())
    frozen_prefixes = ("conv1.", "bn1.", "layer1.", "layer2.")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    finetune_classifier(
        separable(4, 0, "a"), separable(2, 1, "b"), net, tmp_path, freeze="layer3", max_epochs=2, batch_size=2,
        optimizer="sgd", lr=0.1, progress=False,
    )  # fmt: skip
    after = net.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert not {k for k in moved if k.startswith(frozen_prefixes)}  # weights, running_mean/var, num_batches_tracked
    assert any(k.startswith("layer3.") and "running_mean" in k for k in moved)  # trainable BN still learns stats
    assert any(k.startswith("fc.") for k in moved)


def test_gradual_unfreezing_adds_a_param_group_and_survives_a_checkpoint_round_trip():
    def model_and_optimizer():
        seed_everything(0)
        net = build_classifier("scratch", num_classes=2, **SMALL)
        freeze_until(net, "layer4")
        return net, build_optimizer(net, "adam", lr=1e-3)

    net, opt = model_and_optimizer()
    assert len(opt.param_groups) == 1
    held = {id(p) for p in opt.param_groups[0]["params"]}
    assert held == {id(p) for p in net.parameters() if p.requires_grad}
    unfreezer = GradualUnfreeze(net, opt, {2: "layer3", 3: "layer2"}, lr=1e-4)
    engine = Engine(lambda e, b: None)
    unfreezer.attach(engine)
    engine.run([0], max_epochs=1)
    assert len(opt.param_groups) == 1 and not net.layer3[0].conv1.weight.requires_grad
    engine.run([0], max_epochs=2)
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == 1e-4
    assert net.layer3[0].conv1.weight.requires_grad and not net.layer2[0].conv1.weight.requires_grad
    assert all(p.requires_grad for group in opt.param_groups for p in group["params"])

    net2, opt2 = model_and_optimizer()
    again = GradualUnfreeze(net2, opt2, {2: "layer3", 3: "layer2"}, lr=1e-4)
    again.load_state_dict(unfreezer.state_dict())
    opt2.load_state_dict(opt.state_dict())  # would fail with mismatched groups
    assert len(opt2.param_groups) == 2 and net2.layer3[0].conv1.weight.requires_grad
    with pytest.raises(ValueError, match="schedule stage"):
        GradualUnfreeze(net, opt, {1: "decoder"})


def test_leakage_guard_refuses_subjects_the_denoiser_saw(tmp_path):
    write_run_info(tmp_path / "denoiser", train_subjects=["s1", "s2", "s3"], val_subjects=["s4"])
    check_denoiser_leakage(tmp_path / "denoiser", val_subjects=["s5"], test_subjects=["s6"])
    with pytest.raises(LeakageError, match=r"'denoiser training' and 'classifier test' share 2 subject\(s\): s2, s4"):
        check_denoiser_leakage(tmp_path / "denoiser", val_subjects=["s5"], test_subjects=["s2", "s4", "s7"])
    write_run_info(tmp_path / "anonymous", train_subjects=[])
    with pytest.raises(ValueError, match="cannot be ruled out"):
        check_denoiser_leakage(tmp_path / "anonymous", ["s5"])
    with pytest.raises(LeakageError, match="te00"):
        finetune_classifier(
            separable(2, 0, "tr"), separable(2, 1, "va"), build_classifier("scratch", **SMALL), tmp_path / "run",
            test_data=separable(2, 2, "te"), denoiser_run=_denoiser_run(tmp_path, ["tr00", "te00"]), progress=False,
        )  # fmt: skip
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.raises(LeakageError, match="'train' and 'val'"):
        finetune_classifier(
            separable(2, 0, "x"), separable(2, 0, "x"), build_classifier("scratch", **SMALL), tmp_path / "run2",
            progress=False,
        )  # fmt: skip


def _denoiser_run(tmp_path, subjects):
    run = tmp_path / "denoiser_run"
    write_run_info(run, train_subjects=subjects, val_subjects=[])
    return run

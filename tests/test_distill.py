"""Distillation: the loss equals a hand computation; the teacher stays frozen and in eval mode; a run works."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events

from pipeline.training.classify import build_classifier
from pipeline.training.distill import TeacherStudent, build_distill_trainer, distill
from pipeline.training.engines import make_loader
from pipeline.training.losses import DistillationLoss
from pipeline.utils.seed import seed_everything

SMALL = {"model_depth": 10, "block_inplanes": (4, 8, 16, 32)}


def by_hand(student, teacher, target, alpha, t):
    """α·CE + (1−α)·T²·KL(p_teacher ‖ p_student), written out element by element."""
    batch, classes = student.shape
    ce = kl = 0.0
    for b in range(batch):
        s = [math.exp(v) for v in student[b].tolist()]
        ce += -math.log(s[target[b]] / sum(s)) / batch
        ps = [math.exp(v / t) for v in student[b].tolist()]
        pt = [math.exp(v / t) for v in teacher[b].tolist()]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        kl += sum(pt[k] * math.log(pt[k] / ps[k]) for k in range(classes)) / batch
    return alpha * ce + (1 - alpha) * t * t * kl


@pytest.mark.parametrize(("alpha", "t"), [(0.5, 4.0), (0.1, 1.0), (1.0, 2.0), (0.0, 3.0)])
def test_distillation_loss_equals_a_hand_computation(alpha, t):
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    target = torch.tensor([0, 2, 1, 1, 0])
    expected = by_hand(student, teacher, target.tolist(), alpha, t)
    loss = DistillationLoss(alpha=alpha, temperature=t)
    assert loss(student, teacher, target).item() == pytest.approx(expected, rel=1e-5)
    assert loss((student, teacher), target).item() == pytest.approx(expected, rel=1e-5)


def test_distillation_loss_is_zero_soft_term_when_student_equals_teacher():
    logits = torch.randn(4, 2)
    target = torch.tensor([0, 1, 1, 0])
    soft_only = DistillationLoss(alpha=0.0, temperature=2.0)(logits, logits.clone(), target)
    assert soft_only.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        DistillationLoss(alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        DistillationLoss(temperature=0)


def items(n, seed, prefix):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        image = 0.1 * torch.rand(1, 16, 16, 16, generator=g)
        image[:, 2:8, 2:8, 2:8] += 0.8 * (i % 2)
        out.append({"image": image, "label": i % 2, "subject": f"{prefix}{i}"})
    return out


def test_teacher_stays_frozen_and_in_eval_mode_during_training():
    seed_everything(0)
    teacher = build_classifier("scratch", num_classes=2, **SMALL)
    student = build_classifier("scratch", num_classes=2, **SMALL)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    pair = TeacherStudent(student, teacher)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    trainer = build_distill_trainer(pair, make_loader(items(4, 0, "s"), batch_size=2), optimizer,
                                    DistillationLoss(0.5, 2.0), max_epochs=2)  # fmt: skip
    modes = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: modes.append((teacher.training, student.training)))
    trainer.run()
    assert modes == [(False, True)] * 4
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())  # weights and BN statistics
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_distill_run_trains_the_student_and_saves_only_it(tmp_path):
    seed_everything(0)
    teacher = build_classifier("scratch", num_classes=2, **SMALL)
    student = build_classifier("scratch", num_classes=2, **SMALL)
    start = {k: v.clone() for k, v in student.state_dict().items()}
    result = distill(
        items(4, 0, "tr"), items(2, 1, "va"), student, teacher, tmp_path, alpha=0.7, temperature=3.0,
        max_epochs=2, lr=1e-2, progress=False,
    )  # fmt: skip
    saved = torch.load(result.last_checkpoint, weights_only=True)
    assert set(saved["network"]) == set(student.state_dict())  # the student alone, no teacher.* keys
    assert any(not torch.equal(start[k], v) for k, v in saved["network"].items())
    assert (tmp_path / "predictions_val.csv").is_file()
    assert len(result.losses) == 4
    from pipeline.inference.infer import load_weights
    from pipeline.runtime.model_card import build_network, read_model_card

    load_weights(build_network(read_model_card(tmp_path / "model.pt")), tmp_path / "model.pt")  # the student's card

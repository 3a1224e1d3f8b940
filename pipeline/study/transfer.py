"""Part (b): does pretraining the encoder by denoising help the classifier?

A labelled task that is hard (:data:`pipeline.study.data.HARD_COHORT`), a fixed test set, and a separate unlabelled
cohort the denoiser pretrains on (other subjects: the classifier's leakage guard checks it). Encoders: random,
denoiser-pretrained (at one or more pretraining budgets), and pretrained weights when a file is given. Each is
evaluated by a linear probe on frozen pooled features and by fine-tuning, at a small and a larger labelled set. Every
encoder, random or pretrained, is fine-tuned by the same rule (equal protocols): batch-norm statistics re-estimated on
the labelled data, an encoder learning rate :data:`ENCODER_LR_FACTOR` times the head's, the same steps, the final
epoch kept (no epoch is picked on a small validation set). Each fine-tuning run records its protocol, and the report
refuses to compare runs whose protocols differ.
Inputs are normalised the same way for pretraining and classification (divided by the volume's robust maximum).
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from networks import ResUnet3D
from pipeline.study.arms import train_for_steps
from pipeline.study.plan import StudySettings
from pipeline.training.batchnorm import reestimate_batchnorm
from pipeline.training.checkpoint import load_network_state
from pipeline.training.classify import build_classifier, finetune_classifier
from pipeline.utils.seed import seed_everything

__all__ = [
    "ENCODER_LR_FACTOR",
    "encoder_classifier",
    "finetune",
    "linear_probe",
    "logistic_floor",
    "pooled_features",
    "pretrain_denoiser",
    "pretraining_network",
]

logger = logging.getLogger(__name__)

#: Fine-tuning (every encoder, random or pretrained): the encoder's learning rate relative to the new head's.
ENCODER_LR_FACTOR = 0.1
#: The classifier head's learning rate (AdamW, the bundle's finetune_classifier rate).
HEAD_LR = 1e-3
#: Patch side of the pretraining (every encoder stage must see at least 2 voxels, so all four are trained).
PRETRAIN_PATCH = 24


def pretraining_network(recipe: Mapping[str, Any]) -> ResUnet3D:
    """The denoiser that pretrains the encoder: the baseline's, with all four levels so every stage learns."""
    return ResUnet3D(**{**recipe["network"], "levels": 4, "patch_size": PRETRAIN_PATCH})


def pretrain_denoiser(
    seed: int,
    recipe: Mapping[str, Any],
    settings: StudySettings,
    train_data: Any,
    val_items: Sequence[Mapping[str, Any]],
    run_dir: Path,
    budget: float = 1.0,
) -> dict[str, Any]:
    """Pretrain the encoder by denoising the unlabelled cohort; ``model.pt`` and ``run_info.json`` stay in ``run_dir``.

    Args:
        seed: the run seed.
        recipe: :func:`pipeline.study.plan.baseline_recipe`.
        settings: the study's sizes (``pretrain_steps``).
        train_data: :func:`pipeline.study.data.denoising_patches` of the unlabelled cohort.
        val_items: the volume validated once, after the last step.
        run_dir: the run folder.
        budget: the pretraining budget in multiples of ``settings.pretrain_steps`` (at least one step).

    Returns:
        ``{"weights": path of model.pt, "run_dir", "steps", "seconds"}``.
    """
    seed_everything(seed)
    network = pretraining_network(recipe)
    started = time.perf_counter()
    _, steps = train_for_steps(
        network,
        train_data,
        val_items,
        run_dir,
        max(1, round(settings.pretrain_steps * budget)),
        seed,
        PRETRAIN_PATCH,
        optimizer=recipe["optimizer"],
        lr=recipe["lr"],
        weight_decay=recipe["weight_decay"],
    )
    return {
        "weights": str(run_dir / "model.pt"),
        "run_dir": str(run_dir),
        "steps": steps,
        "seconds": time.perf_counter() - started,
    }


def encoder_classifier(
    kind: str, seed: int, recipe: Mapping[str, Any], weights: str | None = None, depth: int = 18
) -> nn.Module:
    """A two-class ResNet whose encoder is random, the pretrained denoiser's, or a pretrained-weights file's.

    Args:
        kind: ``"random"``, ``"denoiser"`` (``weights``: the pretraining's ``model.pt``) or ``"pretrained"``
            (``weights``: a 3D-ResNets / MedicalNet file, ``depth`` its ResNet depth).
        seed: seeds the new head (and the whole network for ``"random"``).
        recipe: :func:`pipeline.study.plan.baseline_recipe`.
        weights: the weights file of ``"denoiser"`` and ``"pretrained"``.
        depth: ResNet depth of ``"pretrained"``.
    """
    seed_everything(seed)
    encoder = {k: recipe["network"][k] for k in ("block_inplanes", "conv1_t_size", "conv1_t_stride")}
    if kind == "random":
        return build_classifier("scratch", 2, model_depth=recipe["network"]["model_depth"], **encoder)
    if kind == "denoiser":
        denoiser = pretraining_network(recipe)
        denoiser.load_state_dict(load_network_state(weights), strict=True)
        return build_classifier("denoiser", 2, denoiser=denoiser)
    if kind == "pretrained":
        return build_classifier("pretrained", 2, path=weights, model_depth=depth)
    raise ValueError(f"kind must be 'random', 'denoiser' or 'pretrained', got {kind!r}")


def pooled_features(network: nn.Module, items: Sequence[Mapping[str, Any]], batch: int = 4) -> np.ndarray:
    """The frozen encoder's globally pooled last-stage features, ``(N, F)`` (the input of the classifier's head)."""
    body = copy.deepcopy(network)
    body.fc = nn.Identity()
    body.eval()
    device = next(body.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(items), batch):
            x = torch.stack([torch.as_tensor(i["image"]).float() for i in items[start : start + batch]])
            out.append(body(x.to(device)).float().cpu().numpy())
    return np.concatenate(out)


def _logistic(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    """Class-1 probabilities of an L2 logistic regression whose strength is chosen by CV on the training set only."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = StratifiedKFold(max(2, min(5, int(np.bincount(train_y).min()))), shuffle=True, random_state=0)
    model = make_pipeline(
        StandardScaler(), LogisticRegressionCV(Cs=np.logspace(-4, 2, 7), cv=folds, scoring="roc_auc", max_iter=5000)
    )
    with warnings.catch_warnings():  # scikit-learn 1.8 announces default changes that do not affect an L2 model
        warnings.simplefilter("ignore", FutureWarning)
        model.fit(train_x, train_y)
    return model.predict_proba(test_x)[:, 1]


def linear_probe(
    network: nn.Module, train: Sequence[Mapping[str, Any]], test: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """A logistic regression on the frozen encoder's pooled features: test probabilities per subject."""
    started = time.perf_counter()
    train_y = np.array([i["label"] for i in train])
    prob = _logistic(pooled_features(network, train), train_y, pooled_features(network, test))
    return _predictions(test, prob, time.perf_counter() - started, steps=0)


def logistic_floor(
    train_paths: Sequence[str], train_y: Sequence[int], test_paths: Sequence[str], test: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The floor: a logistic regression on downsampled voxels (:func:`pipeline.data.cohort.block_features`)."""
    from pipeline.data.cohort import block_features

    started = time.perf_counter()
    train_x = np.stack([block_features(p) for p in train_paths])
    test_x = np.stack([block_features(p) for p in test_paths])
    prob = _logistic(train_x, np.asarray(train_y), test_x)
    return _predictions(test, prob, time.perf_counter() - started, steps=0)


def _predictions(test: Sequence[Mapping[str, Any]], prob: Any, seconds: float, steps: int) -> dict[str, Any]:
    return {
        "subjects": [str(i["subject"]) for i in test],
        "labels": [int(i["label"]) for i in test],
        "prob": [float(p) for p in prob],
        "seconds": seconds,
        "steps": steps,
    }


def finetune(
    network: nn.Module,
    seed: int,
    settings: StudySettings,
    sets: Mapping[str, Sequence[Mapping[str, Any]]],
    size: str,
    run_dir: Path,
    denoiser_run: str | None = None,
) -> dict[str, Any]:
    """Fine-tune the whole classifier for the study's fixed number of steps; test probabilities per subject.

    Every encoder gets the same protocol, random or pretrained: batch-norm statistics re-estimated on the training set,
    a learning rate :data:`ENCODER_LR_FACTOR` times the head's (:data:`HEAD_LR`), ``settings.finetune_steps`` steps.
    The final epoch's weights are kept (validation runs once, after the last epoch).

    Returns:
        Test ``subjects``, ``labels``, ``prob``, ``seconds``, ``steps`` and the ``protocol`` it followed
        (``encoder_lr``, ``head_lr``, ``batchnorm_reestimated``), which the report checks is the same for every encoder.
    """
    train = list(sets[size])
    batch = min(settings.finetune_batch, len(train))
    epochs = max(1, math.ceil(settings.finetune_steps * batch / len(train)))
    encoder_lr = HEAD_LR * ENCODER_LR_FACTOR
    images = [
        torch.stack([torch.as_tensor(i["image"]) for i in train[k : k + batch]]) for k in range(0, len(train), batch)
    ]
    reestimate_batchnorm(network, images)
    head = list(network.fc.parameters())
    body = [p for name, p in network.named_parameters() if not name.startswith("fc.")]
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": encoder_lr}, {"params": head, "lr": HEAD_LR}], weight_decay=1e-4
    )
    started = time.perf_counter()
    finetune_classifier(
        train,
        list(sets["val"]),
        network,
        run_dir,
        test_data=list(sets["test"]),
        denoiser_run=denoiser_run,
        max_epochs=epochs,
        batch_size=batch,
        optimizer=optimizer,
        scheduler="cosine",
        key_metric="auc",
        val_interval=epochs,
        checkpoint_every=epochs,
        keep_checkpoints=1,
        seed=seed,
        resume=False,
        progress=False,
    )
    seconds = time.perf_counter() - started
    with open(run_dir / "predictions_test.csv", newline="") as handle:
        rows = {row["subject"]: float(row["prob_1"]) for row in csv.DictReader(handle)}
    prob = [rows[str(i["subject"])] for i in sets["test"]]
    result = _predictions(sets["test"], prob, seconds, steps=epochs * math.ceil(len(train) / batch))
    result["protocol"] = {"encoder_lr": encoder_lr, "head_lr": HEAD_LR, "batchnorm_reestimated": True}
    return result

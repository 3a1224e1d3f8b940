"""The synthetic-head generator (transforms.synth) and its data helpers (pipeline.data.synth): properties on tiny
volumes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from pipeline.data.synth import (
    IdentityLossCheck,
    load_tissue_maps,
    phantom_tissue_maps,
    synth_items,
    synth_splits,
    synth_volumes,
)
from transforms.synth import (
    CLASSES,
    TISSUE_CHANNELS,
    VOXEL_SIZE_KEY,
    RandNoiseMix,
    RandNoiseMixd,
    RandResolution,
    RandResolutiond,
    RandTissueContrast,
    RandTissueContrastd,
    RandVoxelSizeCrop,
    RandVoxelSizeCropd,
    synth_transforms,
)

KINDS = ("numpy", "torch", "metatensor")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def phantom() -> MetaTensor:
    return phantom_tissue_maps((32, 32, 32))


def as_kind(array, kind: str):
    array = np.array(array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else array, copy=True)
    if kind == "numpy":
        return array
    if kind == "torch":
        return torch.as_tensor(array)
    return MetaTensor(
        torch.as_tensor(array), affine=torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    )


def snapshot(img) -> np.ndarray:
    return np.array(img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else img, copy=True)


# ----------------------------------------------------------------------------------------------- tissue maps
def test_phantom_is_a_tissue_stack(phantom):
    assert phantom.shape == (len(TISSUE_CHANNELS), 32, 32, 32)
    gm, wm, csf, distance = (phantom[i].numpy() for i in range(4))
    total = gm + wm + csf
    assert total.max() <= 1.0 + 1e-5 and min(gm.max(), wm.max(), csf.max()) > 0.5
    assert np.all(distance[total >= 0.5] == 0) and distance.max() > 3


def test_template_tissue_maps_come_from_nilearn_offline():
    maps = load_tissue_maps(margin_mm=8.0, spacing=4.0)
    assert maps.shape[0] == 4 and maps.meta["channels"] == list(TISSUE_CHANNELS)
    assert np.allclose(np.linalg.norm(np.asarray(maps.affine)[:3, :3], axis=0), 4.0)
    gm, wm, csf, distance = (maps[i].numpy() for i in range(4))
    brain = gm + wm + csf >= 0.5
    assert 0.1 < brain.mean() < 0.6  # a brain with air around it
    assert distance[brain].max() == 0 and distance[~brain].min() > 0
    for axis in range(3):  # air on every side (the brainstem reaches the template's lower edge: 8 mm there)
        profile = brain.any(axis=tuple(a for a in range(3) if a != axis))
        assert not profile[:2].any() and not profile[-2:].any()


# ----------------------------------------------------------------------------------------------- crop
@pytest.mark.parametrize("kind", KINDS)
def test_crop_shape_voxel_size_and_input_untouched(phantom, kind):
    img = as_kind(phantom, kind)
    before = snapshot(img)
    crop = RandVoxelSizeCrop(spatial_size=8, voxel_size=(2.0, 2.0), anisotropic_prob=0.0, oversample=None)
    out = crop.set_random_state(0)(img)
    assert out.shape == (4, 16, 16, 16) and out.dtype == torch.float32
    assert np.array_equal(snapshot(img), before)
    if kind == "metatensor":
        assert np.allclose(out.meta[VOXEL_SIZE_KEY].numpy(), 2.0)
        start = crop.start
        assert np.allclose(np.asarray(out.affine)[:3, 3], start)  # identity input affine: origin = crop start


def test_crop_pads_outside_the_fov_per_channel_and_block_averages(phantom):
    crop = RandVoxelSizeCrop(spatial_size=16, voxel_size=(3.0, 3.0), anisotropic_prob=0.0, pad_value=(0, 0, 0, 99))
    crop.set_random_state(1)
    for _ in range(5):
        out = crop(phantom)
        assert out.shape[1:] == (16, 16, 16)  # 48 mm box averaged in 3 x 3 x 3 blocks
        assert np.allclose(np.linalg.norm(np.asarray(out.affine)[:3, :3], axis=0), 3.0)
        if (crop.start < 0).any() or (crop.start + crop.box > 32).any():
            assert float(out[3].max()) == pytest.approx(99.0)


def test_crop_centres_in_the_foreground_when_asked(phantom):
    crop = RandVoxelSizeCrop(
        spatial_size=4,
        voxel_size=1.0,
        anisotropic_prob=0.0,
        foreground_prob=1.0,
        foreground_channel=3,
        foreground_max=0,
    )
    crop.set_random_state(0)
    for _ in range(20):
        out = crop(phantom)
        assert float(out[3, 2, 2, 2]) == 0.0  # the centre voxel lies in the brain


def test_crop_is_reproducible_and_prob_zero_is_identity(phantom):
    a = RandVoxelSizeCropd("x", spatial_size=8).set_random_state(3)({"x": phantom})["x"]
    b = RandVoxelSizeCropd("x", spatial_size=8).set_random_state(3)({"x": phantom})["x"]
    assert torch.equal(a, b)
    same = RandVoxelSizeCropd("x", spatial_size=8, prob=0.0)({"x": phantom})["x"]
    assert torch.equal(torch.as_tensor(same), phantom.as_tensor())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"spatial_size": 0}, "spatial_size"),
        ({"voxel_size": (3.0, 1.0)}, "voxel_size"),
        ({"slice_spacing": -1}, "slice_spacing"),
        ({"anisotropic_prob": 2}, "anisotropic_prob"),
        ({"oversample": 0.1}, "oversample"),
        ({"foreground_prob": -0.1}, "foreground_prob"),
        ({"pad_value": "x"}, "pad_value"),
    ],
)
def test_crop_rejects_bad_arguments_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RandVoxelSizeCrop(**kwargs)


# ----------------------------------------------------------------------------------------------- contrast
def test_class_probabilities_sum_to_one_with_and_without_a_head(phantom):
    synth = RandTissueContrast(head_prob=1.0).set_random_state(0)
    stack = phantom.as_tensor()
    synth.randomize(stack.shape[1:])
    probs = synth.probabilities(stack)
    assert set(probs) == set(CLASSES)
    assert torch.allclose(sum(probs.values()), torch.ones(stack.shape[1:]), atol=1e-5)
    assert float(probs["skull"].max()) > 0.5 and float(probs["scalp"].max()) > 0.5
    bare = RandTissueContrast(head_prob=0.0).set_random_state(0)
    bare.randomize(stack.shape[1:])
    probs = bare.probabilities(stack)
    assert float(probs["skull"].max()) == 0.0 and float(probs["scalp"].max()) == 0.0
    assert torch.allclose(sum(probs.values()), torch.ones(stack.shape[1:]), atol=1e-5)


@pytest.mark.parametrize("contrast", ["t1", "t2", "pd", "random"])
def test_brightest_tissue_is_one_without_texture_or_bias(phantom, contrast):
    synth = RandTissueContrast(contrasts=[contrast], head_prob=0.0, texture=0.0, fine_texture=0.0, bias=0.0)
    out = synth.set_random_state(0)(phantom)
    assert out.shape == (1, 32, 32, 32)
    means = synth.normalised_means()
    assert max(means[c] for c in ("csf", "gm", "wm")) == pytest.approx(1.0)
    assert float(out.max()) <= 1.0 + 1e-5 and float(out.min()) >= 0.0
    outside = (phantom[0] + phantom[1] + phantom[2]).numpy() < 1e-5
    assert outside.any() and np.allclose(out[0].numpy()[outside], means["air"], atol=1e-4)


def test_t1_and_t2_order_the_tissues_as_real_scans_do(phantom):
    for contrast, order in (("t1", ("csf", "gm", "wm")), ("t2", ("wm", "gm", "csf"))):
        synth = RandTissueContrast(contrasts=[contrast]).set_random_state(5)
        synth.randomize((4, 4, 4))
        means = synth.normalised_means()
        assert means[order[0]] < means[order[1]] < means[order[2]]


@pytest.mark.parametrize("kind", KINDS)
def test_contrast_keeps_metadata_and_never_writes_into_the_input(phantom, kind):
    img = as_kind(phantom, kind)
    before = snapshot(img)
    out = RandTissueContrast().set_random_state(0)(img)
    assert np.array_equal(snapshot(img), before)
    assert out.shape == (1, 32, 32, 32) and torch.isfinite(torch.as_tensor(out)).all()
    if kind == "metatensor":
        assert isinstance(out, MetaTensor) and torch.equal(out.affine, img.affine)


def test_contrast_dict_writes_the_brain_mask_and_is_seeded(phantom):
    a = RandTissueContrastd("label").set_random_state(7)({"label": phantom})
    b = RandTissueContrastd("label").set_random_state(7)({"label": phantom})
    assert torch.equal(a["label"], b["label"])
    expected = (phantom[0] + phantom[1] + phantom[2] >= 0.5).float()
    assert torch.equal(a["mask"][0].as_tensor(), expected.as_tensor())
    fixed = [RandTissueContrastd("label", prob=0.0).set_random_state(s)({"label": phantom})["label"] for s in (1, 2)]
    assert torch.equal(fixed[0], fixed[1])  # prob=0: the fixed mid-range image, whatever the seed


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"contrasts": ["t3"]}, "contrasts"),
        ({"contrasts": {"mine": {"gm": (0, 1)}}}, "contrasts"),
        ({"head_prob": 1.5}, "head_prob"),
        ({"skull_mm": (5, 2)}, "skull_mm"),
        ({"texture": 2.0}, "texture"),
        ({"bias": -1}, "bias"),
    ],
)
def test_contrast_rejects_bad_arguments_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RandTissueContrast(**kwargs)


def test_contrast_rejects_a_stack_without_four_channels():
    with pytest.raises(ValueError, match="gm"):
        RandTissueContrast()(np.zeros((1, 8, 8, 8), dtype=np.float32))


# ----------------------------------------------------------------------------------------------- resolution
def test_resolution_resamples_to_the_recorded_voxel_size_and_keeps_constants():
    img = MetaTensor(torch.full((1, 24, 24, 24), 0.7), affine=torch.eye(4, dtype=torch.float64))
    img.meta[VOXEL_SIZE_KEY] = torch.tensor([2.0, 2.0, 3.0])
    out = RandResolution().set_random_state(0)(img)
    assert out.shape == (1, 12, 12, 8)
    assert np.allclose(np.linalg.norm(np.asarray(out.affine)[:3, :3], axis=0), [2.0, 2.0, 3.0])
    assert torch.allclose(out.as_tensor(), torch.full_like(out.as_tensor(), 0.7), atol=1e-5)


def test_resolution_blurs_an_edge_and_keeps_masks_binary():
    edge = torch.zeros(1, 16, 16, 16)
    edge[:, 8:] = 1.0
    sharp = RandResolution(voxel_size=1.0, fwhm_factor=0.5)(edge)
    blurred = RandResolution(voxel_size=1.0, fwhm_factor=3.0)(edge)
    assert float(blurred[0, 7, 8, 8]) > float(sharp[0, 7, 8, 8])
    d = RandResolutiond(["image", "mask"], mask_keys="mask", voxel_size=2.0)({"image": edge, "mask": edge})
    assert d["mask"].shape == (1, 8, 8, 8) and set(torch.unique(torch.as_tensor(d["mask"])).tolist()) <= {0.0, 1.0}


# ----------------------------------------------------------------------------------------------- noise mix
def test_noise_mix_draws_only_enabled_types_and_fresh_noise():
    mix = RandNoiseMix(gaussian=15.0, rician=None, poisson=(100.0, 200.0), weights=(1, 0, 1)).set_random_state(0)
    img = np.full((1, 24, 24, 24), 0.5, dtype=np.float32)
    kinds, outs = set(), []
    for _ in range(12):
        outs.append(torch.as_tensor(mix(img)))
        kinds.add(mix.kind)
    assert kinds == {"gaussian", "poisson"}
    assert not torch.equal(outs[0], outs[1])


def test_noise_mix_gaussian_level_is_on_the_255_scale():
    mix = RandNoiseMix(gaussian=15.0, rician=None, poisson=None).set_random_state(0)
    out = torch.as_tensor(mix(np.full((1, 32, 32, 32), 0.5, dtype=np.float32)))
    assert abs(float(out.std()) - 15 / 255) / (15 / 255) < 0.03


def test_noise_mix_dict_shares_type_and_level_but_not_the_field():
    mixd = RandNoiseMixd(["a", "b"], gaussian=(5.0, 30.0)).set_random_state(1)
    x = torch.full((1, 16, 16, 16), 0.5)
    d = mixd({"a": x, "b": x})
    assert not torch.equal(torch.as_tensor(d["a"]), torch.as_tensor(d["b"]))
    assert abs(float(torch.as_tensor(d["a"]).std()) - float(torch.as_tensor(d["b"]).std())) < 0.01
    assert torch.equal(x, torch.full((1, 16, 16, 16), 0.5))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"gaussian": None, "rician": None, "poisson": None}, "at least one"),
        ({"weights": (1, 1)}, "weights"),
        ({"gaussian": (1, 300)}, "level"),
        ({"poisson": 0.0}, "scale"),
    ],
)
def test_noise_mix_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RandNoiseMix(**kwargs)


# ----------------------------------------------------------------------------------------------- the chain
def test_chain_makes_patch_pairs_with_fresh_noise_and_is_seeded(phantom):
    chain = synth_transforms(patch_size=16, seed=0)
    items = [chain({"label": phantom}) for _ in range(6)]
    for item in items:
        assert {"image", "label", "mask"} <= set(item)
        for key in ("image", "label", "mask"):
            assert item[key].shape == (1, 16, 16, 16) and torch.isfinite(torch.as_tensor(item[key])).all()
        assert float(item["label"].min()) >= 0.0
        assert not torch.equal(torch.as_tensor(item["image"]), torch.as_tensor(item["label"]))
    again = synth_transforms(patch_size=16, seed=0)({"label": phantom})
    assert torch.equal(torch.as_tensor(again["image"]), torch.as_tensor(items[0]["image"]))
    assert {str(i["image"].meta["synth_noise"]).split()[0] for i in items} <= {"gaussian", "rician", "poisson"}


def test_chain_covers_air_and_brain(phantom):
    chain = synth_transforms(patch_size=8, voxel_size=1.0, foreground_prob=0.0, seed=2)
    means = [float(chain({"label": phantom})["mask"].mean()) for _ in range(30)]
    assert min(means) == 0.0 and max(means) > 0.5


def test_chain_rejects_bad_gain():
    with pytest.raises(ValueError, match="gain"):
        synth_transforms(gain=1.5)


# ----------------------------------------------------------------------------------------------- pipeline helpers
def test_synth_volumes_are_fixed_whole_volumes(phantom):
    a = synth_volumes(phantom, n=2, voxel_size=2.0, level=15.0, divisible_k=8)
    b = synth_volumes(phantom, n=2, voxel_size=2.0, level=15.0, divisible_k=8)
    assert [v["subject"] for v in a] == ["synth-val-0", "synth-val-1"]
    for x, y in zip(a, b):
        assert x["image"].shape == (1, 16, 16, 16) and torch.equal(x["image"], y["image"])
        assert x["image"].meta["synth_noise"] == "gaussian 15"
    assert not torch.equal(a[0]["label"], a[1]["label"])
    splits = synth_splits(a)
    assert splits.train == ("synth-generator",) and splits.val == ("synth-val-0", "synth-val-1")
    with pytest.raises(ValueError, match="noise"):
        synth_volumes(phantom, noise="lowdose")


def test_synth_items_share_one_stack(phantom):
    items = synth_items(phantom, 3)
    assert len(items) == 3 and all(i["label"] is phantom for i in items)
    with pytest.raises(ValueError, match="n must"):
        synth_items(phantom, 0)


class _Engine:
    def __init__(self) -> None:
        self.state = type("State", (), {"output": None, "metrics": {}})()


def test_identity_loss_check_warns_when_the_network_returns_its_input(caplog):
    check = IdentityLossCheck(torch.nn.L1Loss(), after=4, window=4)
    engine = _Engine()
    image, label = torch.ones(2, 1, 4, 4, 4), torch.zeros(2, 1, 4, 4, 4)
    with caplog.at_level(logging.WARNING, logger="pipeline.data.synth"):
        for _ in range(4):
            engine.state.output = {"image": image, "label": label, "loss": torch.tensor(1.0)}
            check(engine)
    assert check.ratios == [(4, pytest.approx(1.0))] and "not learning" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.data.synth"):
        for _ in range(4):
            engine.state.output = [{"image": image, "label": label, "loss": torch.tensor(0.1)}]
            check(engine)
    assert check.ratios[-1][1] == pytest.approx(0.1) and "not learning" not in caplog.text
    assert engine.state.metrics["loss_vs_identity"] == pytest.approx(0.1)

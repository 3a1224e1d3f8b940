"""HeadMask and the crop/pad helpers: the mask is the filled head, patches sample the brain, all invert."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from transforms.spatial import (
    HeadMask,
    HeadMaskd,
    center_crop,
    divisible_pad,
    foreground_crop,
    random_patches,
)

AFFINE = torch.tensor([[0.0, -1.5, 0.0, 10.0], [2.0, 0.0, 0.0, -4.0], [0.0, 0.0, 1.0, 7.0], [0.0, 0.0, 0.0, 1.0]])


def ellipsoid(shape=(28, 24, 20), radii=(10, 8, 7), centre=None) -> np.ndarray:
    centre = centre or tuple(s / 2 for s in shape)
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    r = np.sqrt(sum(((g - c) / rad) ** 2 for g, c, rad in zip(grid, centre, radii)))
    return r < 1


@pytest.fixture
def head() -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipsoid with a dark interior 'ventricle', plus an isolated bright speck in a corner."""
    brain = ellipsoid()
    img = brain * 100.0
    ventricle = ellipsoid(radii=(3, 2, 2))
    img[ventricle] = 2.0
    img[1, 1, 1] = 100.0
    return img[None].astype(np.float32), brain


@pytest.mark.parametrize("kind", ["numpy", "torch", "metatensor"])
def test_mask_is_the_filled_largest_component(head, kind):
    img, brain = head
    inputs = {"numpy": img.copy(), "torch": torch.as_tensor(img.copy())}
    inputs["metatensor"] = MetaTensor(torch.as_tensor(img.copy()), affine=AFFINE)
    mask = HeadMask()(inputs[kind])
    assert mask.shape == img.shape and mask.dtype == torch.float32
    np.testing.assert_array_equal(mask[0].numpy().astype(bool), brain)  # ventricle filled, speck dropped
    np.testing.assert_array_equal(np.asarray(inputs[kind]), img)
    if kind == "metatensor":
        assert torch.equal(mask.affine, AFFINE)


def test_mask_options(head):
    img, brain = head
    plain = HeadMask(threshold=50.0, fill_holes=False, largest_component=False)(img)[0].numpy().astype(bool)
    assert plain[1, 1, 1] and not plain[14, 12, 10]
    dilated = HeadMask(dilate=1)(img)[0].numpy().astype(bool)
    assert dilated.sum() > brain.sum() and (dilated | ~brain).all()
    assert not HeadMask()(np.zeros((1, 6, 6, 6), dtype=np.float32)).any()
    for kwargs, match in [({"threshold": "mean"}, "threshold"), ({"dilate": -1}, "dilate")]:
        with pytest.raises(ValueError, match=match):
            HeadMask(**kwargs)
    with pytest.raises(ValueError, match="exactly one"):
        HeadMaskd(keys=("image", "label"))
    d = HeadMaskd(keys="image", mask_key="brain")({"image": img})
    assert set(d) == {"image", "brain"}


def test_random_patches_are_centred_inside_the_mask():
    img = np.random.default_rng(0).uniform(size=(1, 24, 24, 24)).astype(np.float32)
    mask = np.zeros_like(img)
    mask[0, 2:5, 18:21, 9:12] = 1  # a small off-centre brain
    steps = Compose(random_patches(["image", "mask"], patch_size=8, num_samples=6)).set_random_state(0)
    patches = steps({"image": img, "mask": mask})
    assert len(patches) == 6
    for p in patches:
        assert p["image"].shape == (1, 8, 8, 8)
        assert p["mask"][0, 4, 4, 4] == 1  # centre voxel drawn from the mask
    with pytest.raises(ValueError, match="num_samples"):
        random_patches("image", 8, num_samples=0)
    with pytest.raises(ValueError, match="patch_size"):
        random_patches("image", (8, 0, 8))


def test_background_share_of_patch_centres_is_the_one_asked_for():
    img = np.random.default_rng(0).uniform(size=(1, 24, 24, 24)).astype(np.float32)
    mask = np.zeros_like(img)
    mask[0, 8:16, 8:16, 8:16] = 1  # a brain in the middle of air
    for background in (0.0, 0.3):
        steps = Compose(random_patches(["image", "mask"], 6, num_samples=400, background=background))
        patches = steps.set_random_state(1)({"image": img, "mask": mask})
        outside = np.mean([float(p["mask"][0, 3, 3, 3]) == 0 for p in patches])
        # binomial(400, 0.3): 4 standard deviations is 0.09
        assert abs(outside - background) < 0.095, (background, outside)
    for bad in (-0.1, 1.0, True):
        with pytest.raises(ValueError, match="background"):
            random_patches("image", 8, background=bad)


def test_small_volumes_are_padded_before_patching():
    img = np.ones((1, 6, 10, 12), dtype=np.float32)
    out = Compose(random_patches(["image", "mask"], patch_size=8)).set_random_state(0)({"image": img, "mask": img})
    assert out[0]["image"].shape == (1, 8, 8, 8)


def test_crop_pad_chain_keeps_and_restores_the_affine_exactly(head):
    img, brain = head
    data = {"image": MetaTensor(torch.as_tensor(img), affine=AFFINE, meta={"filename_or_obj": "sub-01.nii.gz"})}
    chain = Compose(
        [
            HeadMaskd(keys="image"),
            foreground_crop(["image", "mask"], margin=1),
            divisible_pad(["image", "mask"], k=16),
        ]
    )
    out = chain(data)
    assert out["image"].shape == (1, 32, 32, 16)
    assert all(s % 16 == 0 for s in out["image"].shape[1:])
    assert out["image"].meta["filename_or_obj"] == "sub-01.nii.gz"
    back = chain.inverse(out)
    assert back["image"].shape == img.shape
    assert torch.allclose(back["image"].affine, AFFINE.double())
    inside = np.zeros_like(brain)
    inside[3:26, 3:22, 2:19] = True  # the crop box (brain bounding box + 1-voxel margin) comes back exactly
    np.testing.assert_array_equal(back["image"][0].numpy()[inside], img[0][inside])


def test_center_crop_crops_and_pads_invertibly():
    img = MetaTensor(torch.arange(20 * 10 * 6, dtype=torch.float32).reshape(1, 20, 10, 6), affine=AFFINE)
    crop = center_crop("image", (12, 12, 12))
    out = crop({"image": img})
    assert out["image"].shape == (1, 12, 12, 12)
    back = crop.inverse(out)
    assert back["image"].shape == img.shape and torch.allclose(back["image"].affine, AFFINE.double())
    np.testing.assert_array_equal(back["image"][0, 4:16].numpy(), img[0, 4:16].numpy())
    with pytest.raises(ValueError, match="roi_size"):
        center_crop("image", -3)
    with pytest.raises(ValueError, match="margin"):
        foreground_crop("image", margin=-1)
    with pytest.raises(ValueError, match="k"):
        divisible_pad("image", k=0)

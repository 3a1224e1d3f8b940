"""Encoder transfer between ResUnet3D and a MONAI ResNet classifier, both directions, strict."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import ResNet

from networks import ResUnet3D, build_resnet, encoder_to_classifier, load_encoder_from_classifier

TINY = {"block_inplanes": (4, 8, 16, 32)}


def test_unet_to_classifier_to_unet_keeps_every_tensor():
    torch.manual_seed(0)
    unet = ResUnet3D(model_depth=10, **TINY)
    clf = encoder_to_classifier(unet, 5)
    assert isinstance(clf, ResNet) and clf.fc.out_features == 5
    clf(torch.randn(2, 1, 32, 32, 32)).sum().backward()
    torch.optim.SGD(clf.parameters(), lr=1.0).step()  # fine-tuning changes the encoder copy only
    changed = [k for k, v in clf.state_dict().items() if not k.startswith("fc.") and v.is_floating_point()]
    assert any(not torch.equal(clf.state_dict()[k], unet.encoder.state_dict()[k]) for k in changed)
    decoder = {k: v.clone() for k, v in unet.state_dict().items() if not k.startswith("encoder.")}
    load_encoder_from_classifier(unet, clf)
    assert all(torch.equal(v, clf.state_dict()[k]) for k, v in unet.encoder.state_dict().items())
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in decoder.items())


@pytest.mark.parametrize(
    "clf_kwargs", [{"model_depth": 18}, {"model_depth": 10, "shortcut_type": "A"}, {"model_depth": 10, "norm": "none"}]
)
def test_mismatched_classifier_is_refused(clf_kwargs):
    unet = ResUnet3D(model_depth=10, **TINY)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    clf = build_resnet(**{"block_inplanes": (4, 8, 16, 32), "num_classes": 2, **clf_kwargs})
    with pytest.raises(ValueError, match="same configuration"):
        load_encoder_from_classifier(unet, clf)
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())


def test_build_resnet_rejects_bad_class_count():
    with pytest.raises(ValueError, match="num_classes"):
        build_resnet(10, num_classes=0)

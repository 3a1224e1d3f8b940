"""Pretrained weights: every checkpoint format (built here, random weights), strict loading, errors, freezing."""

from __future__ import annotations

import logging

import pytest
import torch
from monai.networks.nets import ResNet
from torch import nn

from networks import (
    PretrainedWeightsError,
    ResUnet3D,
    build_resnet,
    describe_state_dict,
    freeze_until,
    load_pretrained,
    read_state_dict,
)
from networks.resunet import RESNET_LAYOUTS

W = 0.125  # widen_factor: 8-16-32-64 channels keep the files tiny; key layouts are those of the real files


def _monai(depth, shortcut, in_ch, stride, classes=None):
    block, layers = RESNET_LAYOUTS[depth]
    return ResNet(
        block,
        list(layers),
        [64, 128, 256, 512],
        n_input_channels=in_ch,
        conv1_t_stride=stride,
        shortcut_type=shortcut,
        widen_factor=W,
        num_classes=classes or 1,
        feed_forward=classes is not None,
        bias_downsample=False,
    )


def hara_checkpoint(path, depth=18, classes=700):
    """3D-ResNets-PyTorch: {'epoch', 'arch', 'state_dict', 'optimizer'}, RGB conv1, stride (1,2,2), shortcut B."""
    net = _monai(depth, "B", 3, (1, 2, 2), classes)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    torch.save(
        {"epoch": 200, "arch": f"resnet-{depth}", "state_dict": net.state_dict(), "optimizer": opt.state_dict()}, path
    )
    return net.state_dict()


def medicalnet_checkpoint(path, depth=18, seg_head=False):
    """MedicalNet: {'state_dict'} with 'module.' prefix, 1-channel conv1, shortcut A at 18/34, optional conv_seg."""
    net = _monai(depth, "A" if depth in (18, 34) else "B", 1, 2)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    if seg_head:
        state["module.conv_seg.0.weight"] = torch.randn(32, 64 * (4 if depth >= 50 else 1), 2, 2, 2)
        state["module.conv_seg.1.weight"] = torch.randn(32)
    torch.save({"state_dict": state}, path)
    return net.state_dict()


def _unet(**kw):
    return ResUnet3D(widen_factor=W, levels=3, **kw)


@pytest.mark.parametrize(("depth", "classes"), [(18, 700), (18, 1039), (34, 700), (50, 1039)])
def test_3d_resnets_checkpoint_into_unet_encoder(tmp_path, depth, classes, caplog):
    source = hara_checkpoint(tmp_path / "r3d.pth", depth, classes)
    net = _unet(model_depth=depth)
    with caplog.at_level(logging.INFO, logger="networks.pretrained"):
        n = load_pretrained(net, tmp_path / "r3d.pth")
    encoder = net.encoder.state_dict()
    assert n == len(encoder) == len(source) - 2
    for key, value in encoder.items():
        expected = source[key].sum(dim=1, keepdim=True) if key == "conv1.weight" else source[key]
        assert torch.equal(value, expected), key
    assert f"loaded {n} tensors" in caplog.text and "fc.weight" in caplog.text


def test_3d_resnets_checkpoint_into_classifier_keeps_its_new_head(tmp_path):
    source = hara_checkpoint(tmp_path / "r3d.pth", 18, 1039)
    clf = build_resnet(18, widen_factor=W, in_channels=3, num_classes=4)
    head = {k: v.clone() for k, v in clf.state_dict().items() if k.startswith("fc.")}
    load_pretrained(clf, tmp_path / "r3d.pth")
    state = clf.state_dict()
    assert all(torch.equal(state[k], v) for k, v in head.items())  # the 1039-class head is not copied
    assert torch.equal(state["conv1.weight"], source["conv1.weight"])  # 3 -> 3 channels: unchanged
    assert torch.equal(state["layer4.1.bn2.running_var"], source["layer4.1.bn2.running_var"])


@pytest.mark.parametrize(("depth", "seg_head"), [(10, False), (18, False), (34, True), (50, True)])
def test_medicalnet_checkpoint(tmp_path, depth, seg_head):
    source = medicalnet_checkpoint(tmp_path / "med.pth", depth, seg_head)
    net = _unet(model_depth=depth, shortcut_type="A" if depth in (18, 34) else "B")
    assert load_pretrained(net, tmp_path / "med.pth") == len(source)
    for key, value in net.encoder.state_dict().items():
        assert torch.equal(value, source[key]), key


def test_one_channel_weights_into_three_channel_network(tmp_path):
    source = medicalnet_checkpoint(tmp_path / "med.pth", 10)
    net = _unet(model_depth=10, in_channels=3, out_channels=3)
    load_pretrained(net, tmp_path / "med.pth")
    conv1 = net.encoder.conv1.weight.detach()
    assert torch.allclose(conv1, source["conv1.weight"].repeat(1, 3, 1, 1, 1) / 3)
    assert torch.allclose(conv1.sum(dim=1, keepdim=True), source["conv1.weight"])


def test_flat_state_dict_and_project_checkpoints(tmp_path):
    torch.manual_seed(0)
    clf = build_resnet(18, widen_factor=W, num_classes=3)
    torch.save(clf.state_dict(), tmp_path / "flat.pt")
    net = _unet()
    load_pretrained(net, tmp_path / "flat.pt")
    assert all(torch.equal(v, clf.state_dict()[k]) for k, v in net.encoder.state_dict().items())

    trained = _unet()
    opt = torch.optim.Adam(trained.parameters())
    torch.save({"network": trained.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "saver.pt")
    whole = _unet()
    assert load_pretrained(whole, tmp_path / "saver.pt") == len(trained.state_dict())
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in whole.state_dict().items())

    classifier = build_resnet(18, widen_factor=W, num_classes=2)
    load_pretrained(classifier, tmp_path / "saver.pt")  # the U-Net's encoder part into a classifier
    assert all(torch.equal(classifier.state_dict()[k], v) for k, v in trained.encoder.state_dict().items())

    other = ResUnet3D(widen_factor=W, levels=3, skip="cat")
    with pytest.raises(PretrainedWeightsError, match="saver.pt: .*ResUnet3D"):
        load_pretrained(other, tmp_path / "saver.pt")


def test_module_prefix_is_stripped_as_a_prefix_only(tmp_path):
    torch.save({"module.layer1.module.w": torch.zeros(1), "fc.module.b": torch.zeros(1)}, tmp_path / "x.pt")
    state, container = read_state_dict(tmp_path / "x.pt")
    assert set(state) == {"layer1.module.w", "fc.module.b"}
    assert "module." in container


@pytest.mark.parametrize(
    ("source", "target", "match"),
    [
        ({"kind": "medicalnet", "depth": 18}, {"model_depth": 18}, "shortcut_type='A'"),
        ({"kind": "hara", "depth": 18}, {"model_depth": 18, "shortcut_type": "A"}, "shortcut_type='B'"),
        ({"kind": "hara", "depth": 34}, {"model_depth": 18}, "model_depth=34"),
        ({"kind": "medicalnet", "depth": 50}, {"model_depth": 10}, "model_depth=50"),
        ({"kind": "hara", "depth": 18}, {"model_depth": 18, "widen_factor": 0.25}, "shape mismatches"),
        ({"kind": "hara", "depth": 18}, {"model_depth": 18, "norm": "none"}, "no place for"),
    ],
)
def test_mismatches_raise_naming_file_source_and_expectation(tmp_path, source, target, match):
    path = tmp_path / "w.pth"
    if source["kind"] == "hara":
        hara_checkpoint(path, source["depth"])
    else:
        medicalnet_checkpoint(path, source["depth"])
    net = ResUnet3D(**{"widen_factor": W, "levels": 3, **target})
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(PretrainedWeightsError) as info:
        load_pretrained(net, path)
    message = str(info.value)
    assert str(path) in message and "holds" in message and "expects" in message
    assert f"ResNet-{source['depth']}" in message
    assert match in message
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # nothing half-loaded


def test_unreadable_files_raise(tmp_path):
    net = _unet()
    with pytest.raises(PretrainedWeightsError, match="no such file"):
        load_pretrained(net, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="weights_only"):
        load_pretrained(net, tmp_path / "junk.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(PretrainedWeightsError, match="Tensor"):
        load_pretrained(net, tmp_path / "tensor.pth")
    torch.save({"epoch": 3, "weights": [1, 2]}, tmp_path / "dict.pth")
    with pytest.raises(PretrainedWeightsError, match="no state dict"):
        load_pretrained(net, tmp_path / "dict.pth")
    with pytest.raises(ValueError, match="monai.networks.nets.ResNet"):
        load_pretrained(nn.Linear(2, 2), tmp_path / "dict.pth")


def test_describe_state_dict():
    text = describe_state_dict(_monai(34, "A", 1, 2).state_dict())
    assert "ResNet-34" in text and "shortcut A" in text and "3-4-6-3" in text and "no head" in text
    text = describe_state_dict(_monai(50, "B", 3, 2, classes=700).state_dict())
    assert "ResNet-50" in text and "bottleneck" in text and "700 outputs" in text


def _bn_stats(module):
    return [m.running_mean.clone() for m in module.modules() if isinstance(m, nn.BatchNorm3d)]


def test_freeze_until_freezes_weights_and_batchnorm_statistics():
    torch.manual_seed(0)
    clf = build_resnet(18, widen_factor=W, num_classes=2)
    keys = list(clf.state_dict())
    frozen = freeze_until(clf, "layer3")
    assert frozen == ["conv1", "bn1", "layer1", "layer2"]
    assert list(clf.state_dict()) == keys
    clf.train()  # what ignite's engines call every iteration
    assert not clf.layer2[0].bn1.training and clf.layer3[0].bn1.training
    frozen_stats, live_stats = _bn_stats(clf.layer2), _bn_stats(clf.layer3)
    clf(torch.randn(2, 1, 24, 24, 24)).sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(frozen_stats, _bn_stats(clf.layer2)))
    assert not any(torch.equal(a, b) for a, b in zip(live_stats, _bn_stats(clf.layer3)))
    assert all(p.grad is None and not p.requires_grad for p in clf.layer2.parameters())
    assert all(p.grad is not None for p in clf.layer3.parameters())
    assert isinstance(clf.layer2[0].bn1, nn.BatchNorm3d)  # still a BatchNorm (scripting, isinstance checks)

    assert freeze_until(clf, "conv1") == []  # staged fine-tuning: unfreeze everything
    clf.train()
    assert all(p.requires_grad for p in clf.parameters()) and clf.layer2[0].bn1.training
    assert type(clf.layer2[0].bn1) is nn.BatchNorm3d


def test_freeze_until_on_unet_keeps_unrun_stages_frozen_and_scripts():
    net = _unet()
    assert freeze_until(net, "fc") == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
    assert all(not p.requires_grad for p in net.encoder.parameters())
    assert all(p.requires_grad for p in net.decoder.parameters())
    freeze_until(net, "layer2")
    assert all(p.requires_grad for p in net.encoder.layer3.parameters())
    assert all(not p.requires_grad for p in net.encoder.layer4.parameters())  # levels=3 never runs layer4
    net.eval()
    x = torch.randn(1, 1, 20, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(net)(x), net(x))
    with pytest.raises(ValueError, match="module_name"):
        freeze_until(net, "layer5")

"""The network registry: names, defaults, overrides, errors; every denoiser keeps the input size."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import ResNet

from networks import ResUnet3D, get_network, list_networks

DENOISERS = ["attentionunet", "basicunet", "flexibleunet", "resunet3d", "segresnet", "swinunetr", "unet"]


def test_names_and_tasks():
    assert list_networks("denoise") == DENOISERS
    assert list_networks("classify") == ["densenet121", "resnet"]
    assert list_networks() == sorted(DENOISERS + ["densenet121", "resnet"])
    with pytest.raises(ValueError, match="task"):
        list_networks("segment")


def test_unknown_name_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown network 'vnet'.*basicunet.*densenet121"):
        get_network("vnet")


@pytest.mark.parametrize("name", DENOISERS)
def test_denoisers_map_a_one_channel_volume_to_its_own_size(name):
    # SwinUNETR's default instance norms need a deepest map of > 1 voxel: batch norm (eval) lets 32^3 suffice
    small = {"resunet3d": {"widen_factor": 0.125}, "swinunetr": {"feature_size": 12, "norm_name": "batch"}}
    net = get_network(name.upper() if name == "unet" else name, **small.get(name, {})).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert net(x).shape == x.shape


def test_classifiers_and_overrides():
    clf = get_network("resnet", widen_factor=0.125, num_classes=3)
    assert isinstance(clf, ResNet) and clf.fc.out_features == 3
    with torch.no_grad():
        assert get_network("densenet121", out_channels=4).eval()(torch.randn(1, 1, 32, 32, 32)).shape == (1, 4)
    net = get_network("resunet3d", in_channels=2, out_channels=2, model_depth=10, widen_factor=0.125)
    assert isinstance(net, ResUnet3D) and net.encoder.conv1.in_channels == 2
    # the registry's ResNet is the ResUnet3D encoder's configuration: transfer is strict
    unet = get_network("resunet3d", widen_factor=0.125)
    clf = get_network("resnet", widen_factor=0.125)
    unet.encoder.load_state_dict({k: v for k, v in clf.state_dict().items() if not k.startswith("fc.")})
    with pytest.raises(TypeError):
        get_network("unet", no_such_argument=1)

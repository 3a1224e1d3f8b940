"""ResUnet3D: exact output size, options that change the network, the encoder == MONAI ResNet, TorchScript."""

from __future__ import annotations

import itertools

import pytest
import torch
from monai.networks.nets import ResNet
from torch import nn

from networks import RESNET_LAYOUTS, ResUnet3D, build_resnet
from networks.norms import InstanceNorm3d

TINY = {"block_inplanes": (4, 8, 16, 32)}
SIZES = [(37, 45, 29), (64, 48, 40), (33, 33, 33)]
# odd / even / anisotropic, smaller (the CPU convolutions of tiny-channel nets are slow); one axis >= 33 so the
# deepest map of a 4-level net holds two voxels, as instance norm requires
GRID_SIZES = [(37, 21, 18), (34, 19, 24), (33, 17, 17)]
OPTIONS = [
    {},
    {"levels": 3},
    {"levels": 2},
    {"levels": 1},
    {"skip": "cat"},
    {"upsample": "interp"},
    {"no_max_pool": True},
    {"residual_output": True},
    {"attention": "gate"},
    {"attention": "se"},
    {"bottleneck": "transformer", "transformer_heads": 4},
    {"norm": "instance"},
    {"norm": "group"},
    {"norm": "none"},
    {"shortcut_type": "A"},
    {"conv1_t_stride": (1, 2, 2)},
]
DEPTHS = (10, 18, 34, 50)


def _cases():
    """Every option at every depth on a rotating small size, the issue's sizes at depth 18, and a combined case."""
    for (i, opts), depth in itertools.product(enumerate(OPTIONS), DEPTHS):
        size = GRID_SIZES[(i + depth) % 3]
        yield pytest.param(depth, opts, size, id=f"d{depth}-{'-'.join(map(str, opts.values()))}-{size}")
    for size in SIZES:
        yield pytest.param(18, {}, size, id=f"d18-default-{size}")
    combo = {"skip": "cat", "upsample": "interp", "attention": "gate", "bottleneck": "transformer", "norm": "group"}
    for size in SIZES:
        yield pytest.param(18, combo, size, id=f"combo-{size}")


@pytest.mark.parametrize(("depth", "opts", "size"), list(_cases()))
def test_output_size_equals_input_size(depth, opts, size):
    torch.manual_seed(0)
    net = ResUnet3D(model_depth=depth, **TINY, **opts).eval()
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("depth", DEPTHS)
def test_training_step_reaches_every_used_parameter(depth):
    torch.manual_seed(0)
    net = ResUnet3D(model_depth=depth, levels=3, **TINY).train()
    x = torch.randn(2, 1, 24, 20, 18)
    net(x).square().mean().backward()
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable, "nothing to train"
    no_grad = sorted(n for n, p in net.named_parameters() if p.requires_grad and p.grad is None)
    assert not no_grad
    # the stage levels=3 does not run is kept (pretrained weights, classifier) but frozen
    assert all(not p.requires_grad for p in net.encoder.layer4.parameters())
    assert all(p.requires_grad for p in net.encoder.layer3.parameters())


def test_two_dimensional_network():
    net = ResUnet3D(spatial_dims=2, **TINY).eval()
    x = torch.randn(2, 1, 37, 50)
    assert net(x).shape == x.shape
    assert isinstance(net.encoder.conv1, nn.Conv2d)


@pytest.mark.parametrize(
    ("opts", "minimum"),
    [({}, (17, 17, 17)), ({"levels": 3}, (9, 9, 9)), ({"no_max_pool": True}, (9, 9, 9)), ({"levels": 1}, (3, 3, 3))]
    + [({"conv1_t_stride": (1, 2, 2)}, (9, 17, 17))],
)
def test_minimum_size_is_exact(opts, minimum):
    net = ResUnet3D(**TINY, **opts).eval()
    assert net.min_input_size == minimum
    with torch.no_grad():
        assert net(torch.zeros(1, 1, *minimum)).shape[2:] == minimum
        for axis in range(3):
            small = list(minimum)
            small[axis] -= 1
            with pytest.raises(ValueError, match="minimum size is " + "x".join(map(str, minimum))):
                net(torch.zeros(1, 1, *small))


def test_instance_norm_needs_a_deepest_map_of_two_voxels():
    net = ResUnet3D(norm="instance", **TINY).eval()
    with pytest.raises(ValueError, match="instance norm"):
        net(torch.zeros(1, 1, 17, 17, 17))
    assert net(torch.zeros(1, 1, 33, 17, 17)).shape == (1, 1, 33, 17, 17)


@pytest.mark.parametrize(("patch", "levels"), [(64, 4), (48, 4), (32, 3), ((64, 64, 32), 3), (24, 3), (16, 2), (8, 1)])
def test_levels_auto_keeps_feature_maps_of_two_voxels(patch, levels):
    net = ResUnet3D(levels="auto", patch_size=patch, **TINY)
    assert net.levels == levels
    assert len(net.decoder) == levels  # one stage per level + the stem level


def test_levels_auto_and_patch_errors():
    with pytest.raises(ValueError, match="patch_size"):
        ResUnet3D(levels="auto", **TINY)
    with pytest.raises(ValueError, match="too small"):
        ResUnet3D(levels="auto", patch_size=4, **TINY)
    with pytest.raises(ValueError, match="minimum size"):
        ResUnet3D(levels=4, patch_size=16, **TINY)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"skip": "concat"}, "skip"),
        ({"upsample": "nearest"}, "upsample"),
        ({"attention": "cbam"}, "attention"),
        ({"bottleneck": "mamba"}, "bottleneck"),
        ({"norm": "layer"}, "norm"),
        ({"levels": 5}, "levels"),
        ({"levels": 0}, "levels"),
        ({"model_depth": 20}, "model_depth"),
        ({"shortcut_type": "C"}, "shortcut_type"),
        ({"conv1_t_size": 4}, "conv1_t_size"),
        ({"residual_output": True, "out_channels": 2}, "in_channels"),
        ({"decoder_layers": (1, 1)}, "decoder_layers"),
        ({"bottleneck": "transformer", "transformer_heads": 3}, "transformer_heads"),
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"patch_size": (32, 32)}, "patch_size"),
        ({"model_depth": 50, "block_inplanes": (2, 4, 8, 16)}, "block_inplanes"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResUnet3D(**{**TINY, **kwargs})


@pytest.mark.parametrize(
    "change",
    [
        {"levels": 3},
        {"skip": "cat"},
        {"upsample": "interp"},
        {"no_max_pool": True},
        {"attention": "gate"},
        {"attention": "se"},
        {"bottleneck": "transformer"},
        {"norm": "instance"},
        {"norm": "group"},
        {"norm": "none"},
        {"act": "prelu"},
        {"shortcut_type": "A"},
        {"bias_downsample": True},
        {"conv1_t_size": 5},
        {"conv1_t_stride": (1, 2, 2)},
        {"widen_factor": 2.0},
        {"decoder_layers": (1, 1, 1)},
        {"model_depth": 10},
        {"out_channels": 2},
    ],
    ids=str,
)
def test_every_option_changes_what_forward_computes(change):
    """Each option must change the output of ``forward``, not only the module tree.

    The changed network gets every parameter of the default one that it shares by name and shape, so what is left
    to tell the two outputs apart is the option itself: a module built but never called in ``forward``, or an
    argument stored and ignored, gives the same output and fails.
    """
    torch.manual_seed(0)
    base = ResUnet3D(**TINY).eval()
    torch.manual_seed(0)
    other = ResUnet3D(**{**TINY, **change}).eval()
    shared = {
        k: v for k, v in base.state_dict().items() if k in other.state_dict() and other.state_dict()[k].shape == v.shape
    }
    other.load_state_dict(shared, strict=False)
    x = torch.randn(1, 1, 33, 17, 17, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y_base, y_other = base(x), other(x)
    assert y_other.shape[2:] == x.shape[2:]
    if y_other.shape == y_base.shape:
        assert not torch.allclose(y_base, y_other, atol=1e-6), f"{change} leaves the output unchanged"


def test_options_that_resize_the_network_change_its_parameters():
    count = {name: sum(p.numel() for p in ResUnet3D(**{**TINY, **opts}).parameters()) for name, opts in (
        ("default", {}), ("levels3", {"levels": 3}), ("wide", {"widen_factor": 2.0}), ("depth10", {"model_depth": 10}),
        ("cat", {"skip": "cat"}), ("nonorm", {"norm": "none"}), ("shortcutA", {"shortcut_type": "A"}),
    )}  # fmt: skip
    assert count["levels3"] < count["default"] < count["wide"]
    assert count["depth10"] < count["default"] < count["cat"]  # fewer blocks; concatenation widens the decoder
    assert count["nonorm"] < count["default"] and count["shortcutA"] < count["default"]  # no norm / 1x1 conv weights


def test_residual_output_subtracts_the_predicted_noise():
    torch.manual_seed(0)
    plain = ResUnet3D(**TINY).eval()
    residual = ResUnet3D(residual_output=True, **TINY).eval()
    residual.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(1, 1, 33, 35, 34)
    with torch.no_grad():
        torch.testing.assert_close(residual(x), x - plain(x))


@pytest.mark.parametrize("norm", ["instance", "group", "none", ("batch", {"momentum": 0.01})])
def test_norm_reaches_encoder_and_decoder_alike(norm):
    net = ResUnet3D(norm=norm, **TINY)
    expected = {"instance": InstanceNorm3d, "group": nn.GroupNorm}.get(norm if isinstance(norm, str) else "batch")
    expected = expected or nn.BatchNorm3d
    kinds = (nn.BatchNorm3d, nn.InstanceNorm3d, nn.GroupNorm)
    for part in (net.encoder, net.decoder, net.head):
        found = [type(m) for m in part.modules() if isinstance(m, kinds)]
        if norm == "none":
            assert not found
        else:
            assert found and set(found) == {expected}
    if isinstance(norm, tuple):
        assert all(m.momentum == 0.01 for m in net.modules() if isinstance(m, nn.BatchNorm3d))


@pytest.mark.parametrize(("depth", "shortcut"), [(10, "B"), (18, "A"), (18, "B"), (34, "A"), (50, "B")])
def test_encoder_state_dict_equals_monai_resnet(depth, shortcut):
    net = ResUnet3D(model_depth=depth, shortcut_type=shortcut, levels=3, widen_factor=0.25)
    block, layers = RESNET_LAYOUTS[depth]
    reference = ResNet(
        block,
        list(layers),
        [64, 128, 256, 512],
        n_input_channels=1,
        conv1_t_stride=2,
        shortcut_type=shortcut,
        widen_factor=0.25,
        feed_forward=False,
        bias_downsample=False,
    ).state_dict()
    encoder = net.encoder.state_dict()
    assert isinstance(net.encoder, ResNet) and net.encoder.fc is None
    assert list(encoder) == list(reference)
    assert all(encoder[k].shape == reference[k].shape for k in reference)
    assert {k[len("encoder.") :] for k in net.state_dict() if k.startswith("encoder.")} == set(reference)


@pytest.mark.parametrize("opts", [{}, {"shortcut_type": "A", "norm": "group"}, {"levels": 2, "norm": "instance"}])
def test_classifier_round_trip_is_strict_and_exact(opts):
    torch.manual_seed(0)
    net = ResUnet3D(**TINY, **opts)
    clf = net.classifier(num_classes=3)
    assert type(clf) is ResNet and clf.fc.out_features == 3
    source = net.encoder.state_dict()
    for key, value in clf.state_dict().items():
        if key.startswith("fc."):
            continue
        assert torch.equal(value, source[key])
        assert value.data_ptr() != source[key].data_ptr()  # copies, not shared
    assert clf(torch.randn(2, 1, 40, 40, 40)).shape == (2, 3)
    with torch.no_grad():
        for p in clf.parameters():
            p.add_(1.0)
    from networks import load_encoder_from_classifier

    other = ResUnet3D(**TINY, **opts)
    load_encoder_from_classifier(other, clf)
    for key, value in other.encoder.state_dict().items():
        assert torch.equal(value, clf.state_dict()[key])


def test_classifier_rejects_bad_class_count():
    with pytest.raises(ValueError, match="num_classes"):
        ResUnet3D(**TINY).classifier(0)


def test_build_resnet_shortcut_a_matches_monai_forward():
    torch.manual_seed(0)
    ours = build_resnet(18, shortcut_type="A", block_inplanes=(4, 8, 16, 32), num_classes=2).eval()
    monai_net = ResNet(
        "basic", [2, 2, 2, 2], [4, 8, 16, 32], n_input_channels=1, conv1_t_stride=2, shortcut_type="A", num_classes=2
    ).eval()
    monai_net.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 1, 20, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), monai_net(x))


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"skip": "cat", "upsample": "interp", "attention": "gate", "levels": 3, "shortcut_type": "A"},
        {
            "attention": "se",
            "bottleneck": "transformer",
            "transformer_heads": 4,
            "residual_output": True,
            "norm": "instance",
            "no_max_pool": True,
            "model_depth": 10,
        },
    ],
    ids=["default", "cat-interp-gate-l3-A", "se-transformer-residual-instance-nopool-10"],
)
def test_torchscript_export_matches_eager(opts, tmp_path):
    torch.manual_seed(0)
    net = ResUnet3D(**TINY, **opts).eval()
    path = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(net), str(path))
    loaded = torch.jit.load(str(path))
    x = torch.randn(1, 1, 37, 34, 29)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(Exception, match="minimum size"):
        loaded(torch.zeros(1, 1, 8, 8, 8))


def test_the_networks_page_parameter_table_is_the_generated_one():
    from pathlib import Path

    from benchmarks.networks_speed import parameter_table

    page = (Path(__file__).resolve().parents[1] / "docs" / "networks.md").read_text()
    assert parameter_table() in page


def test_monai_resnet_still_gives_norm_and_act_to_the_stem_only():
    """Still broken upstream? MONAI 1.6.1's ``ResNet(norm=..., act=...)`` never passes them to ``_make_layer``, so the
    residual blocks keep batch norm and ReLU. If this test fails, MONAI fixed it and ``build_resnet``'s replacement
    of the block norms can be dropped."""
    kwargs = {"block": "basic", "layers": (1, 1, 1, 1), "block_inplanes": (4, 8, 8, 8), "n_input_channels": 1}
    norm, act = ("instance", {"affine": True}), ("leakyrelu", {"negative_slope": 0.1})
    monai_net = ResNet(spatial_dims=3, norm=norm, act=act, **kwargs)
    assert isinstance(monai_net.bn1, nn.InstanceNorm3d)  # the stem gets it ...
    assert isinstance(monai_net.layer1[0].bn1, nn.BatchNorm3d)  # ... the blocks do not
    assert isinstance(monai_net.layer1[0].act, nn.ReLU)
    ours = build_resnet(10, block_inplanes=(4, 8, 8, 8), norm="instance")
    assert not any(isinstance(m, nn.BatchNorm3d) for m in ours.modules())

"""A shared model is data, never code (issue 27): no model card, embedded card or datalist can run anything.

Every hostile card here would create a marker file if MONAI applied it; each is refused with an
:class:`UnsafeModelCardError` naming the card file and the key, and the marker never appears. Valid cards from the
training workflows still load (``tests/test_model_card.py``, ``tests/test_infer.py``, ``tests/test_bundle*.py``), and
``--trust-card`` applies a card outside the allow-list, with a warning.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from networks import ResUnet3D
from pipeline.errors import CheckpointError, ModelConfigMismatchError, UnsafeModelCardError
from pipeline.inference.infer import collect_scans, denoise_scans, main, output_file
from pipeline.runtime.card_schema import CARD_SCHEMA, NETWORK_TARGETS, card_problems
from pipeline.runtime.model_card import (
    CARD_NAME_IN_TORCHSCRIPT,
    apply_model_card,
    build_network,
    card_path,
    copy_model_card,
    export_torchscript,
    load_torchscript,
    read_model_card,
    write_model_card,
)
from pipeline.training import model_card as model_card_module
from pipeline.training.classify import build_classifier
from tests.conftest import blob_volume

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"
INFERENCE = [os.fspath(CONFIGS / "common.yaml"), os.fspath(CONFIGS / "inference.yaml")]
TINY = {"model_depth": 10, "levels": 2, "block_inplanes": [4, 8, 8, 8], "conv1_t_stride": 1, "conv1_t_size": 3}
QUIET = ["--device", "cpu", "--set", "show_progress=false", "--set", "num_workers=0"]


def touch(marker: Path) -> str:
    """A MONAI expression that creates ``marker``."""
    return f"$__import__('pathlib').Path({os.fspath(marker)!r}).touch()"


def _set(card: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split("::")
    node = card
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return card


#: ``name: (key path named in the error, change to a valid card that would create the marker)``.
HOSTILE: dict[str, tuple[str, Callable[[dict, Path], dict]]] = {
    "expression-target": (
        "network_def::_target_",
        lambda c, m: _set(c, "network_def::_target_", touch(m) + " or __import__('networks').ResUnet3D"),
    ),
    "path-touch-target": (
        "network_def::_target_",
        lambda c, m: {
            **c,
            "network_def": {"_target_": "pathlib.Path.touch", "self": f"$__import__('pathlib').Path({os.fspath(m)!r})"},
        },
    ),
    "expression-argument": ("patch_size", lambda c, m: {**c, "patch_size": touch(m) + " or [16, 16, 16]"}),
    "os-system": (
        "network_def::_target_",
        lambda c, m: {**c, "network_def": {"_target_": "os.system", "command": f"touch {m}"}},
    ),
    "subprocess-run": (
        "network_def::_target_",
        lambda c, m: {**c, "network_def": {"_target_": "subprocess.run", "args": ["touch", os.fspath(m)]}},
    ),
    "builtins-exec": (
        "network_def::_target_",
        lambda c, m: {**c, "network_def": {"_target_": "builtins.exec", "source": f"open({os.fspath(m)!r}, 'w')"}},
    ),
    "shutil-rmtree": (
        "network_def::_target_",
        lambda c, m: {**c, "network_def": {"_target_": "shutil.rmtree", "path": os.fspath(m.parent / "victim")}},
    ),
    "expression-in-list": (
        "network_def::act::0",
        lambda c, m: _set(c, "network_def::act", [touch(m) + " or 'relu'", {}]),
    ),
    "expression-in-dict-value": (
        "network_def::act::1::inplace",
        lambda c, m: _set(c, "network_def::act", ["relu", {"inplace": touch(m) + " or True"}]),
    ),
    "nested-target": (
        "network_def::act::1",
        lambda c, m: _set(c, "network_def::act", ["relu", {"_target_": "os.system", "command": f"touch {m}"}]),
    ),
    "requires": ("network_def", lambda c, m: _set(c, "network_def::_requires_", touch(m))),
    "mode-debug": ("network_def", lambda c, m: _set(c, "network_def::_mode_", "debug")),
    "disabled": ("network_def", lambda c, m: _set(c, "network_def::_disabled_", touch(m) + " or False")),
    "reference": ("spacing", lambda c, m: {**c, "spacing": "@ckpt_path"}),
    "macro": ("percentile_upper", lambda c, m: {**c, "percentile_upper": "%configs/common.yaml::percentile_upper"}),
    "unknown-top-level-key": ("(the card)", lambda c, m: {**c, "initialize": [touch(m)]}),
    "top-level-requires": ("(the card)", lambda c, m: {**c, "_requires_": touch(m)}),
    "expression-in-card-section": (
        "model_card::noise::inputs",
        lambda c, m: _set(c, "model_card::noise::inputs", touch(m)),
    ),
    "unknown-argument": ("network_def", lambda c, m: _set(c, "network_def::path", touch(m))),
    "classifier-reads-a-file": (
        "network_def::init",
        lambda c, m: {**c, "network_def": {**_classifier(), "init": "denoiser", "path": os.fspath(m)}},
    ),
}


def _classifier() -> dict[str, Any]:
    return json.loads(json.dumps(build_classifier("scratch", num_classes=2, model_depth=10).init_config))


@pytest.fixture
def weights(tmp_path) -> Path:
    """Tiny ResUnet3D weights (random) with the card training writes."""
    torch.manual_seed(0)
    net = ResUnet3D(patch_size=16, **TINY)
    path = tmp_path / "model" / "model.pt"
    path.parent.mkdir()
    torch.save(net.state_dict(), path)
    config = {"patch_size": [16, 16, 16], "spacing": None, "percentile_lower": None, "percentile_upper": 99.5}
    noise = {"inputs": "gaussian15", "targets": "clean", "datalist": None, "prediction": "the clean scan"}
    write_model_card(path, net, "denoise", config=config, noise=noise, orientation="RAS")
    return path


@pytest.fixture
def scan(tmp_path) -> Path:
    path = tmp_path / "scans" / "sub-01.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(np.round(blob_volume((16, 16, 16), seed=4)).astype(np.int16), np.eye(4)), path)
    return path


def _hostile(weights: Path, name: str) -> tuple[Path, Path]:
    marker = weights.parent.parent / "code-ran"
    (weights.parent.parent / "victim").mkdir(exist_ok=True)
    card = json.loads(card_path(weights).read_text())
    card_path(weights).write_text(json.dumps(HOSTILE[name][1](card, marker)))
    return card_path(weights), marker


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_card_is_refused_naming_the_file_and_the_key_and_nothing_runs(name, weights, tmp_path):
    card, marker = _hostile(weights, name)
    key = HOSTILE[name][0]
    with pytest.raises(UnsafeModelCardError) as caught:
        read_model_card(weights)
    assert os.fspath(card) in str(caught.value) and key in dict(caught.value.problems), caught.value.problems
    assert "--trust-card" in str(caught.value)
    with pytest.raises(UnsafeModelCardError, match="was refused"):
        apply_model_card(INFERENCE, {"ckpt_path": os.fspath(weights), "bundle_root": os.fspath(ROOT / "bundle")})
    with pytest.raises(UnsafeModelCardError):
        build_network(json.loads(card.read_text()))
    with pytest.raises(UnsafeModelCardError):
        copy_model_card(weights, weights)  # adapt's copy reads the card too
    assert not marker.exists() and (tmp_path / "victim").is_dir()


def test_the_command_line_refuses_a_hostile_card_end_to_end(weights, scan, tmp_path, capsys):
    card, marker = _hostile(weights, "expression-target")
    out = tmp_path / "out"
    args = ["denoise", os.fspath(scan), "--output", os.fspath(out), "--weights", os.fspath(weights), *QUIET]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"the model card {card} was refused" in err and "network_def::_target_" in err and "Traceback" not in err
    assert not marker.exists() and not out.exists()
    card.write_text(json.dumps(HOSTILE["os-system"][1](json.loads(card.read_text()), marker)))
    assert main(args) == 1 and "os.system" in capsys.readouterr().err and not marker.exists()


def test_a_valid_card_still_denoises_and_still_checks_overrides(weights, scan, tmp_path):
    summary = denoise_scans(scan, tmp_path / "out", weights, "cpu", show_progress=False, num_workers=0)
    assert not summary.failed and output_file(scan, tmp_path / "out").is_file()
    with pytest.raises(ModelConfigMismatchError):
        denoise_scans(scan, tmp_path / "out", weights, "cpu", **{"network_def::model_depth": 18})


def test_a_hostile_card_embedded_in_torchscript_is_refused(weights, scan, tmp_path, capsys):
    exported = export_torchscript(weights, tmp_path / "model.ts")
    assert load_torchscript(exported)[1]["model_card"]["task"] == "denoise"  # a valid embedded card loads
    marker = tmp_path / "code-ran"
    card = HOSTILE["expression-target"][1](json.loads(card_path(weights).read_text()), marker)
    hostile = tmp_path / "hostile.ts"
    scripted = torch.jit.script(torch.nn.Conv3d(1, 1, 1))
    torch.jit.save(scripted, os.fspath(hostile), _extra_files={CARD_NAME_IN_TORCHSCRIPT: json.dumps(card)})
    for load in (read_model_card, load_torchscript):
        with pytest.raises(UnsafeModelCardError, match=f"{hostile} \\(embedded model.json\\).*network_def::_target_"):
            load(hostile)
    args = ["denoise", os.fspath(scan), "--output", os.fspath(tmp_path / "out"), "--weights", os.fspath(hostile)]
    assert main([*args, *QUIET]) == 1
    assert "embedded model.json" in capsys.readouterr().err and not marker.exists()


def test_trust_card_applies_a_card_off_the_allow_list_with_a_warning(scan, tmp_path, caplog, capsys):
    weights = tmp_path / "conv.pt"
    torch.save(torch.nn.Conv3d(1, 1, 3, padding=1).state_dict(), weights)
    network = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 1, "kernel_size": 3, "padding": 1}
    write_model_card(weights, network, "denoise", config={"percentile_upper": 99.5})  # warns: off the allow-list
    assert "will refuse it unless trusted" in caplog.text
    args = ["denoise", os.fspath(scan), "--output", os.fspath(tmp_path / "out"), "--weights", os.fspath(weights)]
    assert main([*args, *QUIET]) == 1
    assert "torch.nn.Conv3d" in capsys.readouterr().err
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main([*args, *QUIET, "--trust-card"]) == 0
    assert "trusting the model card" in caplog.text and "network_def::_target_" in caplog.text
    assert output_file(scan, tmp_path / "out").is_file()
    assert isinstance(build_network(read_model_card(weights, trust=True), trust=True), torch.nn.Conv3d)


def test_the_bundle_path_trusts_a_card_only_through_its_config_id(weights, tmp_path):
    card = json.loads(card_path(weights).read_text())
    card["network_def"]["_target_"] = "networks.resunet.ResUnet3D"  # allowed: the same class by its module path
    card_path(weights).write_text(json.dumps(card))
    overrides = {"ckpt_path": os.fspath(weights), "bundle_root": os.fspath(ROOT / "bundle")}
    assert apply_model_card(INFERENCE, overrides)["network_def"]["_target_"] == "networks.resunet.ResUnet3D"
    card["network_def"]["_target_"] = "torch.nn.Conv3d"
    card_path(weights).write_text(json.dumps(card))
    with pytest.raises(UnsafeModelCardError):
        apply_model_card(INFERENCE, overrides)
    assert apply_model_card(INFERENCE, {**overrides, "trust_model_card": True})["network_def"]["_target_"] == (
        "torch.nn.Conv3d"
    )
    assert apply_model_card(INFERENCE, overrides, trust=True)["network_def"]["_target_"] == "torch.nn.Conv3d"


def test_a_torchscript_network_loads_with_the_trust_the_card_was_applied_with(weights, tmp_path):
    exported = export_torchscript(weights, tmp_path / "model.ts")
    overrides = {"ckpt_path": os.fspath(exported), "bundle_root": os.fspath(ROOT / "bundle")}
    assert "trust=False" in apply_model_card(INFERENCE, overrides)["network"]
    assert "trust=True" in apply_model_card(INFERENCE, overrides, trust=True)["network"]


def test_a_datalist_entry_is_a_file_name_never_an_expression(scan, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the expressions touch ./code-ran
    name = touch(Path("code-ran")) + " or 'x.nii.gz'"
    (tmp_path / name).write_bytes(scan.read_bytes())
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"testing": [{"image": name}, {"image": os.fspath(scan)}]}))
    items = collect_scans(datalist)
    assert items[0]["image"] == os.fspath(tmp_path / name)  # the text, read as a path beside the datalist
    summary = denoise_scans(datalist, tmp_path / "out", _empty(tmp_path), "cpu", **_identity())
    assert len(summary.results) == 2 and not (tmp_path / "code-ran").exists()


def test_a_scan_named_like_an_expression_is_a_file_name(scan, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = touch(Path("code-ran")) + " or 'scan.nii.gz'"
    (tmp_path / name).write_bytes(scan.read_bytes())
    for inputs in (name, [name, os.fspath(scan)]):  # as `resunet3d-denoise *` would give it
        summary = denoise_scans(inputs, tmp_path / "out", _empty(tmp_path), "cpu", overwrite=True, **_identity())
        assert not (tmp_path / "code-ran").exists() and summary.results[0].source == name


def _empty(folder: Path) -> Path:
    """Weights of an identity network (no tensors), without a card."""
    torch.save({}, folder / "identity.pt")
    return folder / "identity.pt"


def _identity() -> dict[str, Any]:
    return {"network_def": {"_target_": "torch.nn.Identity"}, "show_progress": False, "num_workers": 0}


def test_pretrained_weights_that_would_run_code_are_refused(tmp_path):
    from networks import load_pretrained
    from networks.pretrained import PretrainedWeightsError
    from tests.faults.unsafe import unsafe_file

    path, marker = unsafe_file(tmp_path)
    with pytest.raises(PretrainedWeightsError, match=str(path)):
        load_pretrained(ResUnet3D(model_depth=10, levels=2), path)
    assert not marker.exists()


def test_every_argument_of_the_project_networks_is_in_the_schema():
    allowed = CARD_SCHEMA["$defs"]["network"]["allOf"]
    arguments = {case["if"]["properties"]["_target_"]["const"]: case["then"]["properties"] for case in allowed}
    resunet = set(inspect.signature(ResUnet3D).parameters)
    assert resunet | {"_target_"} == set(arguments["networks.ResUnet3D"])
    denoiser = ResUnet3D(patch_size=16, **TINY)
    for net in (build_classifier("denoiser", num_classes=3, denoiser=denoiser), denoiser):
        config = json.loads(json.dumps(net.init_config))
        assert set(config) <= set(arguments[config["_target_"]])
        assert card_problems({"model_card": {"format": 1, "task": "classify"}, "network_def": config}) == []
    assert "os.system" not in NETWORK_TARGETS and "monai.networks.nets.UNet" in NETWORK_TARGETS


def test_a_card_from_a_newer_format_or_not_json_is_a_checkpoint_error(weights):
    card = json.loads(card_path(weights).read_text())
    card["model_card"]["format"] = 2
    card_path(weights).write_text(json.dumps(card))
    with pytest.raises(UnsafeModelCardError, match="model_card::format: 2: this version reads card format 1"):
        read_model_card(weights)
    card_path(weights).write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_model_card(weights)


def test_the_old_import_path_of_the_mismatch_error_still_works():
    assert model_card_module.ModelConfigMismatchError is ModelConfigMismatchError
    assert issubclass(UnsafeModelCardError, CheckpointError)


def test_a_subjects_csv_cell_is_text_never_an_expression(scan, tmp_path, monkeypatch):
    from pipeline.data.datasets import load_subjects_csv

    monkeypatch.chdir(tmp_path)
    hostile = touch(Path("code-ran")) + " or 'x'"
    table = tmp_path / "subjects.csv"
    table.write_text(f'subject_id,label,path,note\nsub-01,0,{scan},"{hostile}"\n')
    rows = load_subjects_csv(table)
    assert rows[0]["note"] == hostile and not (tmp_path / "code-ran").exists()


def test_adapted_weights_get_a_card_the_schema_admits(weights, tmp_path):
    """adapt.yaml's copy_model_card writes ``adapted.json`` (the card plus ``derived_from``); it must load again."""
    adapted = tmp_path / "adapted.pt"
    adapted.write_bytes(weights.read_bytes())
    copy_model_card(weights, adapted)
    assert read_model_card(adapted)["derived_from"] == os.fspath(weights)
    card = json.loads(card_path(adapted).read_text())
    card["derived_from"] = touch(tmp_path / "code-ran")
    card_path(adapted).write_text(json.dumps(card))
    with pytest.raises(UnsafeModelCardError, match="derived_from"):
        read_model_card(adapted)

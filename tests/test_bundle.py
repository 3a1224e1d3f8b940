"""The MONAI bundle: metadata, configs and MONAI's own checks (offline), override checking, every workflow end to end.

Each workflow runs on tiny synthetic NIfTI (24^3) with a tiny ResUnet3D (depth 10, narrow stages) so the whole
train -> evaluate -> infer chain, the classifier chain and a 2-process DDP run fit in seconds on 2 CPU cores.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out
from monai.bundle.workflows import _apply_logging_file

from pipeline.bundle_run import (
    ConfigOverrideError,
    check_overrides,
    create_workflow,
    default_bundle_root,
    main,
    unwrap_config_error,
)
from tests.conftest import _affine, blob_volume

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundle"
CONFIGS = BUNDLE / "configs"
SCHEMA = ROOT / "tests" / "data" / "meta_schema_20240725.json"  # MONAI's schema, byte-exact (md5 below)
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"
META = os.fspath(CONFIGS / "metadata.json")
META_CLASSIFIER = [META, os.fspath(CONFIGS / "metadata_classifier.json")]


def cfg(*names: str) -> list[str]:
    return [os.fspath(CONFIGS / n) for n in ("common.yaml", *names)]


TRAIN = cfg("train_denoise.yaml")
EVALUATE = cfg("train_denoise.yaml", "evaluate.yaml")
INFER = cfg("inference.yaml")
FINETUNE = cfg("finetune_classifier.yaml")
DISTILL = cfg("finetune_classifier.yaml", "distill.yaml")
INFER_CLASSIFIER = cfg("inference_classifier.yaml")
MULTI_GPU = cfg("train_denoise.yaml", "multi_gpu_train.yaml")

TINY_UNET = {"network_def::model_depth": 10, "network_def::block_inplanes": [4, 8, 8, 8]}
TINY_DENOISER = {"denoiser_def::model_depth": 10, "denoiser_def::block_inplanes": [4, 8, 8, 8]}
TINY_CLASSIFIER = {"model_depth": 10, "network_def::block_inplanes": [4, 8, 8, 8]}
FAST = {"num_workers": 0, "patch_size": [24, 24, 24], "device": "cpu"}


# ----------------------------------------------------------------------------------------------- data helpers
def write_paired(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        clean = blob_volume((24, 24, 24), seed=i)
        noisy = clean + rng.normal(0, 15 / 255 * clean.max(), clean.shape).astype(np.float32)
        for sub, data in (("FD", clean), ("gaussian15", noisy)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, _affine()), root / sub / f"sub-{i:02d}.nii.gz")
    return root


def write_subjects(root: Path, n: int) -> Path:
    (root / "scans").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        label = i % 2
        volume = blob_volume((24, 24, 24), seed=100 + i)
        if label:
            volume[8:16, 8:16, 8:16] *= 0.3
        nib.save(nib.Nifti1Image(volume, _affine()), root / "scans" / f"s{i:02d}.nii.gz")
        rows.append(
            {"subject_id": f"s{i:02d}", "label": ("control", "patient")[label], "path": f"scans/s{i:02d}.nii.gz"}
        )
    with open(root / "subjects.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["subject_id", "label", "path"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def paired6(tmp_path_factory) -> Path:
    return write_paired(tmp_path_factory.mktemp("paired6"), 6)


@pytest.fixture(scope="module")
def subjects10(tmp_path_factory) -> Path:
    return write_subjects(tmp_path_factory.mktemp("subjects10"), 10)


def run_workflow(configs, workflow_type="train", **overrides):
    workflow = create_workflow(configs, workflow_type=workflow_type, logging_file=False, **overrides)
    try:
        return workflow.run()
    finally:
        workflow.finalize()


# ----------------------------------------------------------------------------------------------- files and metadata
def test_bundle_layout_follows_the_model_zoo():
    assert (BUNDLE / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert "Version 2.0" in (BUNDLE / "LICENSE").read_text()
    assert (BUNDLE / "models" / ".gitkeep").is_file()
    readme = (BUNDLE / "docs" / "README.md").read_text()
    for section in ("Model overview", "Data", "Preprocessing", "Performance", "Commands", "System requirements"):
        assert f"## {section}" in readme
    for section in ("Limitations", "References"):
        assert f"## {section}" in readme
    for name in (
        "common",
        "train_denoise",
        "finetune_classifier",
        "distill",
        "evaluate",
        "inference",
        "inference_classifier",
        "multi_gpu_train",
        "notes_run",
        "small_denoiser",
    ):
        assert (CONFIGS / f"{name}.yaml").is_file(), name


@pytest.mark.parametrize("meta", [META, META_CLASSIFIER], ids=["denoiser", "classifier"])
def test_metadata_verifies_offline_against_the_local_schema(meta):
    verify_metadata(meta_file=meta, filepath=os.fspath(SCHEMA), hash_val=SCHEMA_MD5)


def test_metadata_missing_a_required_key_is_rejected(tmp_path):
    meta = json.loads(Path(META).read_text())
    del meta["required_packages_version"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="required_packages_version"):
        verify_metadata(meta_file=os.fspath(bad), filepath=os.fspath(SCHEMA), hash_val=SCHEMA_MD5)


def test_metadata_pins_match_constraints():
    meta = json.loads(Path(META).read_text())
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        pins[name.strip().lower()] = version.strip()
    assert meta["version"] in meta["changelog"]
    assert meta["schema"].endswith("/0.8.1/meta_schema_20240725.json")
    assert meta["monai_version"] == pins["monai"]
    assert meta["pytorch_version"] == pins["torch"]
    assert meta["numpy_version"] == pins["numpy"]
    for package, version in meta["required_packages_version"].items():
        if package == "resunet3d":
            assert version == re.search(r"^version = (\S+)", (ROOT / "setup.cfg").read_text(), re.M).group(1)
        else:
            assert pins[package.lower()] == version, package
    fmt = meta["network_data_format"]
    for part, key in (("inputs", "image"), ("outputs", "pred")):
        assert {"type", "format", "num_channels", "spatial_shape", "dtype", "value_range"} <= set(fmt[part][key])


def test_logging_conf_is_accepted_by_monai_and_logs_info_to_stdout(capsys):
    root = logging.getLogger()
    saved = (root.level, root.handlers[:])
    try:
        _apply_logging_file(os.fspath(CONFIGS / "logging.conf"))
        assert root.level == logging.INFO
        # a logger no other test configures (an earlier training in the same process leaves "pipeline.training"
        # not propagating to the root, so its lines would not reach this handler)
        logging.getLogger("pipeline.logging_conf_check").info("epoch summary")
        logging.getLogger("pipeline.logging_conf_check").debug("detail")
        out = capsys.readouterr().out
        assert " - pipeline.logging_conf_check - INFO - epoch summary" in out and "detail" not in out
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


def test_configs_use_the_zoo_ids_relative_paths_and_map_location():
    merged = ConfigParser.load_config_files(TRAIN)
    for key in ("bundle_root", "device", "dataset_dir", "ckpt_dir", "output_dir", "network_def", "network"):
        assert key in merged, key
    for key in ("trainer", "dataset", "inferer", "handlers"):
        assert key in merged["train"], key
    assert "evaluator" in merged["validate"] and "val_interval" in merged and "run" in merged
    assert merged["network"].startswith("$@network_def.to(@device")  # (and the channels_last memory format)
    loaders = []
    for path in CONFIGS.glob("*.yaml"):
        text = path.read_text()
        assert not re.search(r"['\"]/(home|Users|data|workspace|tmp)/", text), f"absolute path in {path.name}"
        config = yaml.safe_load(text)

        def walk(node, name=path.name):
            if isinstance(node, dict):
                if node.get("_target_") == "CheckpointLoader":
                    loaders.append((name, node))
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(config)
    assert len(loaders) >= 5
    for name, loader in loaders:
        assert loader.get("map_location") == "@device", name
    # the resume loaders restore the trainer with the rest (train::checkpoint_state, which the saver saves too)
    assert set(merged["train"]["checkpoint_state"]) == {"network", "optimizer", "lr_scheduler", "trainer", "best_saver"}
    resume = [loader for _, loader in loaders if loader["load_dict"] == "@train::checkpoint_state"]
    assert resume and all(loader["_disabled_"] == "$not os.path.exists(@resume_ckpt)" for loader in resume)


# ----------------------------------------------------------------------------------------------- overrides
def test_unknown_override_keys_are_reported_with_suggestions():
    with pytest.raises(ConfigOverrideError) as caught:
        check_overrides(TRAIN, {"num_epoch": 5, "validate::inferr": {}, "dataset_dir": "/data"})
    message = str(caught.value)
    assert "--num_epoch (did you mean --num_epochs" in message
    assert "--validate::inferr (did you mean --validate::inferer" in message
    assert set(caught.value.unknown) == {"num_epoch", "validate::inferr"}


def test_a_misspelt_component_argument_fails_when_built(paired6):
    check_overrides(TRAIN, {"network_def::model_dept": 34})  # a new argument of a component passes the check ...
    workflow = create_workflow(
        TRAIN, logging_file=False, dataset_dir=os.fspath(paired6), **{"network_def::model_dept": 34}
    )
    with pytest.raises(Exception) as caught:  # ... and the class rejects it: nothing is silently dropped
        workflow.parser.get_parsed_content("network_def")
    assert "model_dept" in str(unwrap_config_error(caught.value))


def test_known_keys_and_new_component_arguments_are_accepted():
    check_overrides(TRAIN, {"num_epochs": 3, "network_def::model_depth": 34, "network_def#levels": 3})
    check_overrides(TRAIN, {"network_def::widen_factor": 0.5, "train::handlers::0::seed": 1})
    with pytest.raises(ConfigOverrideError):
        check_overrides(TRAIN, {"train::handlers::99": {}})


def test_command_line_rejects_a_typo_with_exit_status_2(capsys):
    assert main(["--config_file", json.dumps(TRAIN), "--num_epoch", "5"]) == 2
    assert "did you mean --num_epochs" in capsys.readouterr().err


def test_command_line_names_the_component_of_a_bad_target_or_argument(paired6, tmp_path, capsys):
    common = ["--config_file", json.dumps(TRAIN), "--dataset_dir", os.fspath(paired6), "--num_workers", "0"]
    common += ["--bundle_root", os.fspath(tmp_path)]
    assert main([*common, "--lossfn::_target_", "torch.nn.L3Loss"]) == 2
    err = capsys.readouterr().err
    assert "lossfn" in err and "torch.nn.L3Loss" in err and "torch.nn.L1Loss" in err and "Traceback" not in err
    assert main([*common, "--lossfn::reduction_x", "1"]) == 2
    err = capsys.readouterr().err
    assert "lossfn" in err and "reduction_x" in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.pt"))


def test_list_keys_prints_every_config_id(capsys):
    assert main(["--config_file", json.dumps(TRAIN), "--list_keys"]) == 0
    keys = capsys.readouterr().out.split()
    assert {"num_epochs", "network_def::model_depth", "train::trainer::max_epochs", "validate::inferer"} <= set(keys)


def test_bundle_root_defaults_to_the_bundle_folder():
    assert Path(default_bundle_root(TRAIN)) == BUNDLE


def test_override_reaches_the_network_and_unet_is_one_line(paired6):
    workflow = create_workflow(
        TRAIN, logging_file=False, dataset_dir=os.fspath(paired6), **{"network_def::model_depth": 34}
    )
    assert len(workflow.parser.get_parsed_content("network_def").encoder.layer3) == 6  # 34: [3, 4, 6, 3] blocks
    # the README's one-line switch, as the command line (fire) hands it over: a dict
    unet = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 1, "channels": [4, 8]}
    unet["strides"] = [2]
    workflow = create_workflow(TRAIN, logging_file=False, dataset_dir=os.fspath(paired6), network_def=unet)
    net = workflow.parser.get_parsed_content("network")
    assert type(net).__name__ == "UNet"
    assert net(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 1, 16, 16, 16)


def test_fresh_training_noise_and_background_patches_reach_the_training_items(paired6):
    overrides = {"dataset_dir": os.fspath(paired6), "cache_rate": 0.0, **FAST}
    fresh = {"train_noise": "gaussian15", "background_fraction": 0.5}
    workflow = create_workflow(TRAIN, logging_file=False, **fresh, **overrides)
    dataset = workflow.parser.get_parsed_content("train::dataset")
    first, second = dataset[0], dataset[0]
    for patches in (first, second):
        residual = torch.cat([(p["image"] - p["label"]).flatten() for p in patches])
        assert float(residual.std()) == pytest.approx(15 / 255, rel=0.15)  # fresh noise on the normalised scale
    assert not torch.equal(first[0]["image"] - first[0]["label"], second[0]["image"] - second[0]["label"])
    crop = workflow.parser.get_parsed_content("train::patches")[-1]
    assert (crop.cropper.pos_ratio, type(crop).__name__) == (0.5, "RandCropByPosNegLabeld")
    plain = create_workflow(TRAIN, logging_file=False, **overrides)
    assert plain.parser.get_parsed_content("train::noise") == []  # the default trains on the noisy files
    assert plain.parser.get_parsed_content("background_fraction") == 0.25


def test_notes_run_reproduces_the_notes_settings():
    workflow = create_workflow(cfg("train_denoise.yaml", "notes_run.yaml"), logging_file=False, initialize=False)
    parser = workflow.parser
    assert parser["noise_dir"] == "gaussian15" and parser["clean_dir"] == "FD"
    assert parser.get_parsed_content("network_def::model_depth") == 18 and parser["ckpt_interval"] == 10
    assert parser.get_parsed_content("network_def::conv1_t_stride") == 2 and parser["patch_size"] == [64] * 3
    assert parser["num_epochs"] == 10 and parser["batch_size"] == 128 and parser["pretrain_path"] == ""
    assert parser.get_parsed_content("output_dir") == os.path.join("datasets", "ADNI_denoise", "results")


@pytest.mark.parametrize("mixin", [(), ("small_denoiser.yaml",)], ids=["default", "small_denoiser_mixin"])
def test_default_denoiser_is_the_demos_denoiser(mixin):
    # the network a user meets first is the one that denoises within CPU minutes (ResUnet3D-18 scored -57 dB)
    from pipeline.demo.run import DemoSettings

    workflow = create_workflow(cfg("train_denoise.yaml", *mixin), logging_file=False, initialize=False)
    parser = workflow.parser
    network = {k: parser.get_parsed_content(f"network_def::{k}") for k in DemoSettings().denoiser}
    assert network == dict(DemoSettings().denoiser)
    assert parser["patch_size"] == [DemoSettings().patch_size] * 3
    assert parser["learning_rate"] == DemoSettings().learning_rate
    net = parser.get_parsed_content("network_def")
    assert net.encoder.conv1.stride == (1, 1, 1) and net(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 1, 32, 32, 32)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert 0.3e6 < trainable < 0.5e6


def test_resunet18_mixin_switches_the_whole_chain_to_the_notes_network():
    from monai.networks.nets import ResNet
    from monai.networks.nets.resnet import ResNetBlock

    # MedicalNet / 3D-ResNets ResNet-18: MONAI's default widths, 7^3 stride-2 stem
    with torch.device("meta"):
        reference = ResNet(
            ResNetBlock,
            [2, 2, 2, 2],
            [64, 128, 256, 512],
            n_input_channels=1,
            conv1_t_size=7,
            conv1_t_stride=2,
            bias_downsample=False,
            feed_forward=False,
        )
    shapes = {k: v.shape for k, v in reference.state_dict().items()}
    for configs in (TRAIN, INFER, FINETUNE, INFER_CLASSIFIER):
        files = [*configs, os.fspath(CONFIGS / "resunet18.yaml")]
        parser = create_workflow(files, logging_file=False, initialize=False).parser
        assert parser["patch_size"] == [64] * 3
        if "network_def" in parser and parser["network_def"]["_target_"] == "networks.ResUnet3D":
            with torch.device("meta"):
                net = parser.get_parsed_content("network_def")
            assert {k: v.shape for k, v in net.encoder.state_dict().items()} == shapes
            assert net.levels == 4
        if "denoiser_def" in parser:
            assert parser.get_parsed_content("denoiser_def::conv1_t_stride") == 2
        if "network_def::init" in parser:  # the classifier from scratch / pretrained weights
            for key, value in {"model_depth": 18, "block_inplanes": [64, 128, 256, 512], "conv1_t_size": 7}.items():
                assert parser.get_parsed_content(f"network_def::{key}") == value


# ----------------------------------------------------------------------------------------------- MONAI's checks
def test_verify_net_in_out_for_the_denoiser_and_the_classifier():
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=INFER, device="cpu", **TINY_UNET)
    verify_net_in_out(
        net_id="network_def", meta_file=META_CLASSIFIER, config_file=INFER_CLASSIFIER, device="cpu", **TINY_CLASSIFIER
    )
    with pytest.raises(ValueError, match="output channel number"):  # the check can fail: a 3-class classifier
        verify_net_in_out(
            net_id="network_def",
            meta_file=META_CLASSIFIER,
            config_file=INFER_CLASSIFIER,
            device="cpu",
            class_names=["a", "b", "c"],
            **TINY_CLASSIFIER,
        )


def test_ckpt_export_to_torchscript_matches_the_eager_network(tmp_path):
    parser = ConfigParser()
    parser.read_config(INFER)
    parser.update(TINY_UNET)
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def").eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    ckpt_export(
        net_id="network_def",
        filepath=os.fspath(tmp_path / "model.ts"),
        ckpt_file=os.fspath(tmp_path / "model.pt"),
        meta_file=META,
        config_file=INFER,
        **TINY_UNET,
    )
    scripted = torch.jit.load(tmp_path / "model.ts")
    x = torch.rand(1, 1, 24, 28, 20)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-6)


@pytest.mark.parametrize(
    ("configs", "kind"),
    [(TRAIN, "train"), (EVALUATE, "train"), (FINETUNE, "train"), (DISTILL, "train"), (INFER, "infer")],
    ids=["train_denoise", "evaluate", "finetune_classifier", "distill", "inference"],
)
def test_check_properties(configs, kind, paired6, subjects10, tmp_path):
    overrides = {"dataset_dir": os.fspath(paired6), "output_dir": os.fspath(tmp_path / "out")}
    if kind == "infer":
        overrides["dataset_dir"] = os.fspath(paired6 / "gaussian15")
    if "finetune_classifier.yaml" in configs[1]:
        overrides.update(dataset_dir=os.fspath(subjects10), init="scratch", **TINY_CLASSIFIER)
    if "distill.yaml" in configs[-1]:
        from pipeline.training.classify import build_classifier

        teacher = build_classifier(  # with common.yaml's shared norm, which teacher_def takes
            "scratch", num_classes=2, model_depth=10, block_inplanes=[4, 8, 8, 8], norm="instance"
        )
        torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
        overrides.update(teacher_ckpt=os.fspath(tmp_path / "teacher.pt"), teacher_depth=10)
        overrides["teacher_def::block_inplanes"] = [4, 8, 8, 8]
    workflow = create_workflow(configs, workflow_type=kind, logging_file=False, **overrides)
    assert workflow.check_properties() == []


def test_check_properties_for_classifier_inference(subjects10):
    workflow = create_workflow(
        INFER_CLASSIFIER, workflow_type="infer", logging_file=False, dataset_dir=os.fspath(subjects10 / "scans")
    )
    assert workflow.check_properties() == []


# ----------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_denoiser_train_resume_evaluate_infer(paired6, tmp_path, caplog):
    models, run = tmp_path / "models", tmp_path / "run"
    common = {"dataset_dir": os.fspath(paired6), "ckpt_dir": os.fspath(models), **FAST, **TINY_UNET}
    run_workflow(TRAIN, output_dir=os.fspath(run), num_epochs=1, ckpt_interval=1, **common)
    assert (models / "model.pt").is_file() and (models / "checkpoint_epoch=1.pt").is_file()
    assert {"splits.json", "run_info.json", "train.log"} <= {p.name for p in run.iterdir()}
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    # re-running with more epochs resumes from epoch 1 (network, optimiser, scheduler, trainer state)
    state = torch.load(models / "checkpoint_epoch=1.pt", weights_only=True)["trainer"]
    assert state["iteration"] == state["epoch_length"]  # one epoch done
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_workflow(TRAIN, output_dir=os.fspath(run), num_epochs=2, ckpt_interval=1, **common)
    assert f"Restored all variables from {models / 'checkpoint_epoch=1.pt'}" in caplog.text
    trainer_log = [r.getMessage() for r in caplog.records if r.name.endswith("SupervisedTrainer")]
    assert any("Epoch[2] Complete" in m for m in trainer_log)
    assert not any("Epoch[1] Complete" in m for m in trainer_log)  # epoch 1 was not trained again
    final = torch.load(models / "checkpoint_epoch=2.pt", weights_only=True)["trainer"]
    assert final["iteration"] == 2 * state["epoch_length"]
    evaluation = tmp_path / "evaluate"
    run_workflow(EVALUATE, output_dir=os.fspath(evaluation), **common)
    metrics = dict(line.split(",") for line in (evaluation / "metrics.csv").read_text().split())
    assert {"psnr_brain", "psnr_volume", "ssim_brain", "psnr_brain_noisy"} <= set(metrics)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    out = tmp_path / "denoised"
    card = json.loads((models / "model.json").read_text())  # the weights carry their configuration
    assert card["network_def"]["block_inplanes"] == [4, 8, 8, 8] and card["patch_size"] == [24, 24, 24]
    assert card["model_card"]["noise"]["inputs"] == "gaussian15" and card["percentile_upper"] == 99.5
    results = run_workflow(  # so inference needs the weights alone (no network or patch overrides)
        INFER,
        "infer",
        dataset_dir=os.fspath(paired6 / "gaussian15"),
        output_dir=os.fspath(out),
        ckpt_path=os.fspath(models / "model.pt"),
        show_progress=False,
        num_workers=0,
        device="cpu",
    )
    assert results[-1].count("done") == 6
    for source in sorted((paired6 / "gaussian15").iterdir()):
        written = nib.load(out / source.name.replace(".nii.gz", "_denoised.nii.gz"))
        assert written.shape == nib.load(source).shape
        assert np.allclose(written.affine, nib.load(source).affine)


@pytest.mark.slow
def test_classifier_finetune_distill_infer(paired6, subjects10, tmp_path):
    models = tmp_path / "models"
    denoiser_run = tmp_path / "denoiser"
    base = {"ckpt_dir": os.fspath(models), **FAST}
    run_workflow(
        TRAIN, dataset_dir=os.fspath(paired6), output_dir=os.fspath(denoiser_run), num_epochs=1, **base, **TINY_UNET
    )
    classifier = {
        "dataset_dir": os.fspath(subjects10),
        "denoiser_run": os.fspath(denoiser_run),
        "input_size": [24, 24, 24],
        "num_epochs": 1,
        **base,
        **TINY_DENOISER,
    }
    run_workflow(FINETUNE, output_dir=os.fspath(tmp_path / "finetune"), **classifier)
    assert (models / "classifier.pt").is_file()
    predictions = list(csv.DictReader(open(tmp_path / "finetune" / "val_predictions.csv")))
    assert predictions and {"subject", "label", "prediction"} <= set(predictions[0])
    # the classifier's encoder started as the denoiser's: layer-by-layer copy checked on conv1 after 0 steps
    shutil.copy(models / "classifier.pt", models / "teacher.pt")
    run_workflow(
        DISTILL,
        output_dir=os.fspath(tmp_path / "distill"),
        teacher_depth=10,
        # the teacher is that classifier: the default encoder's full-resolution 3^3 stem
        **{
            "teacher_def::block_inplanes": [4, 8, 8, 8],
            "teacher_def::conv1_t_size": 3,
            "teacher_def::conv1_t_stride": 1,
        },
        **classifier,
    )
    assert (models / "student.pt").is_file()
    csv_path = tmp_path / "predictions.csv"
    card = json.loads((models / "student.json").read_text())  # the student carries its configuration
    assert card["class_names"] == ["control", "patient"] and card["input_size"] == [24, 24, 24]
    assert card["network_def"]["model_depth"] == 10 and card["model_card"]["training"]["init"] == "denoiser"
    results = run_workflow(  # so inference needs the weights alone
        INFER_CLASSIFIER,
        "infer",
        dataset_dir=os.fspath(subjects10 / "scans"),
        output_csv=os.fspath(csv_path),
        ckpt_path=os.fspath(models / "student.pt"),
        show_progress=False,
        num_workers=0,
        device="cpu",
    )
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 10 and results[-1].count("done") == 10
    for row in rows:
        assert abs(float(row["prob_control"]) + float(row["prob_patient"]) - 1) < 1e-4
        assert row["prediction"] in ("control", "patient")


def test_classifier_refuses_subjects_the_denoiser_saw(subjects10, tmp_path):
    denoiser_run = tmp_path / "denoiser"
    denoiser_run.mkdir()
    from pipeline.training.runinfo import write_run_info

    write_run_info(denoiser_run, train_subjects=[f"s{i:02d}" for i in range(10)], val_subjects=[])
    workflow = create_workflow(
        FINETUNE,
        logging_file=False,
        dataset_dir=os.fspath(subjects10),
        denoiser_run=os.fspath(denoiser_run),
        output_dir=os.fspath(tmp_path / "out"),
        ckpt_dir=os.fspath(tmp_path / "models"),
    )
    with pytest.raises(Exception) as caught:
        workflow.run()
    cause = unwrap_config_error(caught.value)
    assert type(cause).__name__ == "LeakageError"
    assert not (tmp_path / "models" / "classifier.pt").exists()


def test_denoiser_split_from_the_classifiers_csv_keeps_its_val_and_test_unseen(paired6, tmp_path):
    parts = ["train", "train", "train", "train", "val", "test"]
    table = tmp_path / "subjects.csv"
    lines = ["subject_id,label,split,path"]
    lines += [f"sub-{i:02d},{i % 2},{part},{paired6 / 'FD' / f'sub-{i:02d}.nii.gz'}" for i, part in enumerate(parts)]
    table.write_text("\n".join(lines) + "\n")
    workflow = create_workflow(
        TRAIN, logging_file=False, dataset_dir=os.fspath(paired6), subjects_csv=os.fspath(table), val_fraction=0.25
    )
    splits = workflow.parser.get_parsed_content("splits")
    assert set(splits.train) | set(splits.val) == {f"sub-{i:02d}" for i in range(4)}
    assert len(splits.val) == 1 and splits.test == ("sub-05",)
    default = create_workflow(TRAIN, logging_file=False, dataset_dir=os.fspath(paired6)).parser
    drawn = default.get_parsed_content("splits")
    assert sorted(drawn.train + drawn.val + drawn.test) == [f"sub-{i:02d}" for i in range(6)]


@pytest.mark.slow
def test_multi_gpu_override_on_two_cpu_processes(paired6, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        os.fspath(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "pipeline.bundle_run",  # the README's command (tests/test_bundle_run.py compares it with MONAI's)
        "--config_file",
        json.dumps(MULTI_GPU),
        "--dataset_dir",
        os.fspath(paired6),
        "--ckpt_dir",
        os.fspath(tmp_path / "models"),
        "--output_dir",
        os.fspath(tmp_path / "run"),
        "--num_epochs",
        "1",
        "--val_fraction",
        "0.34",
        "--patch_size",
        "[24,24,24]",
        "--num_workers",
        "0",
        "--network_def::model_depth",
        "10",
        "--network_def::block_inplanes",
        "[4,8,8,8]",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped from DistributedDataParallel
    events = [p for p in (tmp_path / "run").iterdir() if p.name.startswith("events.out.tfevents")]
    assert len(events) == 1  # TensorBoard on rank 0 only
    console = done.stdout + done.stderr
    # only rank 0 logs to the console: each of these lines once, not once per process
    assert console.count("input summary of monai.bundle.scripts.run") == 1, console[-3000:]
    assert console.count("Setting logging properties based on config") == 1
    assert console.count("Got new best metric of psnr_brain") == 1
    assert console.count("Epoch[1] Metrics") == 1
    info = [re.sub(r"^[\d-]+ [\d:,]+ ", "", line) for line in console.splitlines() if " - INFO - " in line]
    assert len(info) == len(set(info)), [line for line in info if info.count(line) > 1]

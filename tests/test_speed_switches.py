"""The speed switches of issue 6: ``precision`` (fp32 | bf16 | fp16) and ``channels_last`` in the engines, the
bundle's workflows and ``python -m pipeline.inference.infer`` (with ``--overlap``).

What must hold whatever the switches: the network really runs in the chosen precision and memory layout, every
prediction that reaches a loss, a metric, ``Invertd`` or a NIfTI writer is float32, the weights keep their names
and values (checkpoints load either way), and fp16 on a CPU is refused in one line before anything runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer

from networks import ResUnet3D
from pipeline.bundle_run import create_workflow, unwrap_config_error
from pipeline.bundle_run import main as bundle_main
from pipeline.inference import infer, runner
from pipeline.training.denoise import evaluate_denoiser, train_denoiser
from pipeline.training.engines import check_precision, memory_format, precision_settings
from pipeline.training.handlers import AutocastInferer, ChannelsLastInferer
from pipeline.utils.precision import NATIVE_BF16_ENV
from tests.test_bundle import FAST, INFER, INFER_CLASSIFIER, TINY_CLASSIFIER, TINY_UNET, TRAIN, cfg, write_paired
from tests.test_engines import cubes

FINETUNE = cfg("finetune_classifier.yaml")
SWITCHES = [("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)]


def tiny_resunet(seed: int = 0, in_channels: int = 1) -> ResUnet3D:
    torch.manual_seed(seed)
    return ResUnet3D(in_channels=in_channels, out_channels=1, model_depth=10, levels=2, block_inplanes=(4, 8, 8, 8))


def psnr(reference: np.ndarray, other: np.ndarray) -> float:
    """PSNR of ``other`` against ``reference`` over the reference's range."""
    mse = float(np.mean((reference.astype(np.float64) - other) ** 2))
    span = float(reference.max() - reference.min())
    return float("inf") if mse == 0 else 10 * np.log10(span**2 / mse)


class Recorder:
    """Hooks that see what the project controls: what it hands to the network, and the dtype autocast computes in.

    ``watch_input`` (a forward pre-hook on the network) records the memory layout and dtype of every tensor the
    project's inferer chain hands to the network; ``watch_output`` (a forward hook, e.g. on ``encoder.layer1``) the
    dtype a module's output has under the autocast region. What a convolution kernel returns *inside* the network
    (its output memory format) is the kernel's choice and differs between CPUs (oneDNN on AVX2 returns NCDHW where
    AVX-512 keeps channels-last), so it is never asserted. A one-channel (B, 1, H, W, D) tensor is contiguous in both
    layouts: a test of the conversion itself needs an input with several channels.
    """

    def __init__(self) -> None:
        self.output_dtypes: set[torch.dtype] = set()
        self.input_dtypes: set[torch.dtype] = set()
        self.channels_last_inputs: list[bool] = []

    def watch_input(self, network: torch.nn.Module) -> Recorder:
        network.register_forward_pre_hook(self._input)
        return self

    def watch_output(self, module: torch.nn.Module) -> Recorder:
        module.register_forward_hook(self._output)
        return self

    def _input(self, module: torch.nn.Module, args: tuple) -> None:
        self.input_dtypes.add(args[0].dtype)
        self.channels_last_inputs.append(args[0].is_contiguous(memory_format=torch.channels_last_3d))

    def _output(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.output_dtypes.add(output.dtype)


def channels_last_weights(network: torch.nn.Module) -> bool:
    """Whether every 5-D weight of ``network`` is laid out in ``channels_last_3d`` (what ``memory_format`` sets)."""
    weights = [p for p in network.parameters() if p.dim() == 5]
    return bool(weights) and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in weights)


# ----------------------------------------------------------------------------------------------- engines
def test_precision_settings_compose_autocast_and_channels_last():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # building the inferers needs no GPU
    base = SimpleInferer()
    assert precision_settings("fp32", cpu, base) == (False, base)
    amp, bf16 = precision_settings("bf16", "cpu", base, channels_last=True)
    assert not amp and isinstance(bf16, AutocastInferer) and bf16.dtype == torch.bfloat16
    assert bf16.output_dtype == torch.float32 and isinstance(bf16.inferer, ChannelsLastInferer)
    assert bf16.inferer.inferer is base
    assert precision_settings("fp16", cuda, base) == (True, base)  # training: MONAI's amp and GradScaler
    amp, fp16 = precision_settings("fp16", cuda, base, training=False)  # evaluation: autocast, float32 out
    assert not amp and fp16.dtype == torch.float16 and fp16.device_type == "cuda"
    assert fp16.output_dtype == torch.float32
    with pytest.raises(ValueError, match=r"needs a CUDA device, got cpu; use 'auto' on the CPU"):
        precision_settings("fp16", cpu, base, training=False)
    with pytest.raises(ValueError, match=r"precision must be one of \['auto', 'fp32', 'bf16', 'fp16'\], got 'fp8'"):
        check_precision("fp8", cpu)
    assert memory_format(True) == torch.channels_last_3d and memory_format(False) == torch.preserve_format
    with pytest.raises(ValueError, match=r"channels_last must be True or False, got 'false'"):
        precision_settings("fp32", cpu, base, channels_last="false")  # a truthy string must not switch it on


def test_autocast_output_is_float32_and_nested_outputs_are_cast():
    class Pair(torch.nn.Module):  # like pipeline.training.distill.TeacherStudent: (student, teacher) logits + an index
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> tuple:
            y = self.conv(x)
            return y, {"teacher": y.mean(dim=(2, 3, 4)), "index": torch.arange(2)}

    x = torch.rand(2, 1, 8, 8, 8, requires_grad=True)
    pair = Pair()
    reduced = AutocastInferer(SimpleInferer(), "cpu", torch.bfloat16)(x, pair)
    assert reduced[0].dtype == torch.bfloat16  # without output_dtype: the autocast dtype
    student, extra = AutocastInferer(SimpleInferer(), "cpu", torch.bfloat16, output_dtype=torch.float32)(x, pair)
    assert student.dtype == extra["teacher"].dtype == torch.float32 and extra["index"].dtype == torch.int64
    student.sum().backward()  # the cast back is differentiable
    assert pair.conv.weight.grad is not None and torch.isfinite(pair.conv.weight.grad).all()
    assert torch.allclose(student, pair(x)[0], atol=0.05)
    with pytest.raises(ValueError, match="dtype must be torch.bfloat16 or torch.float16"):
        AutocastInferer(SimpleInferer(), "cpu", torch.float32)


def test_channels_last_inferer_feeds_every_window_channels_last_and_changes_nothing_else():
    net = tiny_resunet(in_channels=2).eval()  # two input channels: the layouts differ from the input on
    recorder = Recorder().watch_input(net)
    x = torch.rand(1, 2, 24, 24, 20)
    windows = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=2, overlap=0.25, mode="gaussian")
    with torch.inference_mode():
        plain = windows(x, net)
        assert recorder.channels_last_inputs and not any(recorder.channels_last_inputs)
        recorder.channels_last_inputs.clear()
        net.to(memory_format=memory_format(True))
        fast = ChannelsLastInferer(windows)(x, net)
    assert len(recorder.channels_last_inputs) == 4 and all(recorder.channels_last_inputs)  # 8 windows, 2 a pass
    assert fast.is_contiguous() and fast.shape == plain.shape == (1, 1, 24, 24, 20)
    assert torch.allclose(fast, plain, atol=1e-5)


def test_channels_last_keeps_the_state_dict_so_checkpoints_load_either_way(tmp_path):
    net = tiny_resunet(seed=3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.to(memory_format=memory_format(True))
    after = net.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert net.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    torch.save(after, tmp_path / "channels_last.pt")
    default = tiny_resunet(seed=4)  # other weights, default layout
    default.load_state_dict(torch.load(tmp_path / "channels_last.pt", weights_only=True), strict=True)
    assert default.encoder.conv1.weight.is_contiguous()
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        fast = net.eval()(x.contiguous(memory_format=torch.channels_last_3d))
        assert torch.allclose(default.eval()(x), fast, atol=1e-5)
    back = tiny_resunet(seed=5).to(memory_format=memory_format(True))  # and the other way round
    back.load_state_dict(torch.load(tmp_path / "channels_last.pt", weights_only=True), strict=True)
    assert all(torch.equal(back.state_dict()[k], before[k]) for k in before)


def test_python_api_trains_and_evaluates_in_bf16_channels_last(tmp_path, monkeypatch):
    import pipeline.training.denoise

    chains = []

    def spy(*args, **kwargs):  # the (amp, inferer) the Python API builds its engines with
        chains.append(precision_settings(*args, **kwargs))
        return chains[-1]

    monkeypatch.setattr(pipeline.training.denoise, "precision_settings", spy)
    net = tiny_resunet()
    recorder = Recorder().watch_input(net).watch_output(net.encoder.layer1)
    result = train_denoiser(
        cubes(2, seed=1),
        cubes(1, seed=2),
        net,
        tmp_path,
        max_epochs=1,
        roi_size=(16, 16, 16),
        precision="bf16",
        channels_last=True,
        progress=False,
    )
    assert result.losses and all(np.isfinite(result.losses)) and result.best_metric is not None
    # the project's part: the inferer chain, float32 channels-last inputs, channels-last weights, autocast in bf16
    assert len(chains) == 2  # evaluator, trainer
    for amp, inferer in chains:
        assert not amp and isinstance(inferer, AutocastInferer) and inferer.dtype == torch.bfloat16
        assert inferer.output_dtype == torch.float32 and isinstance(inferer.inferer, ChannelsLastInferer)
    assert recorder.input_dtypes == {torch.float32} and recorder.channels_last_inputs
    assert all(recorder.channels_last_inputs)
    assert recorder.output_dtypes == {torch.bfloat16}
    assert channels_last_weights(net)
    data = cubes(2, seed=5)
    reference = evaluate_denoiser(tiny_resunet(seed=1), data, device="cpu", precision="fp32")
    switched = evaluate_denoiser(tiny_resunet(seed=1), data, device="cpu", precision="bf16", channels_last=True)
    for key, value in reference.items():
        assert switched[key] == pytest.approx(value, abs=0.05), key


# ----------------------------------------------------------------------------------------------- bundle
@pytest.fixture(scope="module")
def paired3(tmp_path_factory) -> Path:
    return write_paired(tmp_path_factory.mktemp("paired3"), 3)


@pytest.fixture(scope="module")
def bf16_run(paired3, tmp_path_factory) -> dict:
    """One bundle training epoch (train_denoise.yaml) with precision bf16 and channels_last on."""
    root = tmp_path_factory.mktemp("bf16_run")
    workflow = create_workflow(
        TRAIN,
        logging_file=False,
        dataset_dir=os.fspath(paired3),
        ckpt_dir=os.fspath(root / "models"),
        output_dir=os.fspath(root / "run"),
        num_epochs=1,
        val_fraction=0.34,
        test_fraction=0.0,
        precision="bf16",
        channels_last=True,
        **FAST,
        **TINY_UNET,
    )
    try:
        network = workflow.parser.get_parsed_content("network")
        recorder = Recorder().watch_input(network).watch_output(network.encoder.layer1)
        workflow.run()
        trainer = workflow.parser.get_parsed_content("train::trainer")
        evaluator = workflow.parser.get_parsed_content("validate::evaluator")
        return {
            "models": root / "models",
            "recorder": recorder,
            "network": network,
            "trainer": trainer,
            "evaluator": evaluator,
        }
    finally:
        workflow.finalize()


def test_bundle_trains_one_epoch_in_bf16_with_channels_last(bf16_run):
    trainer, evaluator, recorder = bf16_run["trainer"], bf16_run["evaluator"], bf16_run["recorder"]
    assert trainer.state.epoch == 1 and not trainer.amp and not evaluator.amp
    for engine in (trainer, evaluator):
        assert isinstance(engine.inferer, AutocastInferer) and engine.inferer.dtype == torch.bfloat16
        assert isinstance(engine.inferer.inferer, ChannelsLastInferer)
    assert isinstance(evaluator.inferer.inferer.inferer, SlidingWindowInferer)
    # the project handed float32 channels-last inputs to channels-last weights, in training and in validation, and
    # autocast computed in bf16 (the layout a kernel returns inside the network is the CPU's business) ...
    assert recorder.input_dtypes == {torch.float32} and len(recorder.channels_last_inputs) >= 2
    assert all(recorder.channels_last_inputs) and channels_last_weights(bf16_run["network"])
    assert recorder.output_dtypes == {torch.bfloat16}
    # ... while the loss and the metrics saw float32 predictions
    item = trainer.state.output[0]  # the trainer decollates its output: one dict per patch
    assert item["pred"].dtype == torch.float32 and np.isfinite(float(item["loss"]))
    assert evaluator.state.output[0]["pred"].dtype == torch.float32
    assert all(np.isfinite(float(v)) for v in evaluator.state.metrics.values())
    # the saved weights load strictly into a network in the default layout
    saved = torch.load(bf16_run["models"] / "model.pt", weights_only=True)  # the state dict itself
    assert list(saved) == list(bf16_run["network"].state_dict())
    arguments = {k: v for k, v in bf16_run["network"].init_config.items() if k != "_target_"}
    fresh = ResUnet3D(**arguments)  # the trained architecture, built anew in the default layout
    fresh.load_state_dict(saved, strict=True)


def test_inference_with_bf16_and_channels_last_writes_float32_close_to_fp32(bf16_run, paired3, tmp_path):
    written: dict[tuple[str, bool], dict[str, np.ndarray]] = {}
    for precision, channels_last in SWITCHES:
        out = tmp_path / f"{precision}_{channels_last}"
        summary = infer.denoise_scans(
            paired3 / "gaussian15",
            out,
            weights=bf16_run["models"] / "model.pt",
            precision=precision,
            channels_last=channels_last,
            show_progress=False,
            guard_enabled=False,  # the guard runs the network in float32 whatever the precision (below)
            **FAST,
            **TINY_UNET,
        )
        assert summary.count("done") == 3
        written[precision, channels_last] = {}
        for source in sorted((paired3 / "gaussian15").iterdir()):
            image = nib.load(out / source.name.replace(".nii.gz", "_denoised.nii.gz"))
            assert image.get_data_dtype() == np.float32 and image.shape == nib.load(source).shape
            assert np.allclose(image.affine, nib.load(source).affine)
            written[precision, channels_last][source.name] = np.asarray(image.dataobj)
    reference = written["fp32", False]
    for switch, volumes in written.items():
        for name, volume in volumes.items():
            assert np.isfinite(volume).all()
            if switch[0] == "fp32":  # the layout alone changes nothing beyond float32 rounding
                assert np.allclose(volume, reference[name], rtol=1e-4, atol=1e-4 * np.abs(reference[name]).max())
            else:
                assert 40 < psnr(reference[name], volume) < np.inf, (switch, name)


def test_bundle_configs_wire_the_switches_into_every_engine(paired3, tmp_path):
    on = {"precision": "bf16", "channels_last": True, **FAST}
    scans = os.fspath(paired3 / "gaussian15")
    workflow = create_workflow(INFER, "infer", logging_file=False, dataset_dir=scans, **on, **TINY_UNET)
    inferer = workflow.parser.get_parsed_content("precision_inferer")
    assert isinstance(inferer, AutocastInferer) and isinstance(inferer.inferer, ChannelsLastInferer)
    assert inferer.inferer.inferer is workflow.parser.get_parsed_content("inferer")
    assert workflow.parser.get_parsed_content("evaluator").inferer is inferer
    # the guard's two passes run in float32 (bf16 rounding would swamp SURE's perturbation), channels_last kept
    guarded = workflow.parser.get_parsed_content("denoise_inferer")
    assert isinstance(guarded, ChannelsLastInferer) and not isinstance(guarded, AutocastInferer)
    network = workflow.parser.get_parsed_content("network")
    assert channels_last_weights(network)
    classify = create_workflow(
        INFER_CLASSIFIER, "infer", logging_file=False, dataset_dir=os.fspath(paired3 / "FD"), **on, **TINY_CLASSIFIER
    )
    assert isinstance(classify.parser.get_parsed_content("evaluator").inferer, AutocastInferer)
    # denoising's default (fp32 here) is channels-last; switched off, the inferer is the plain one
    default = create_workflow(INFER, "infer", logging_file=False, dataset_dir=scans, precision="fp32", **TINY_UNET)
    inferer = default.parser.get_parsed_content("precision_inferer")
    assert isinstance(inferer, ChannelsLastInferer) and inferer.inferer is default.parser.get_parsed_content("inferer")
    assert channels_last_weights(default.parser.get_parsed_content("network"))
    off = {"channels_last": False, "precision": "fp32"}
    plain = create_workflow(INFER, "infer", logging_file=False, dataset_dir=scans, **off, **TINY_UNET)
    assert plain.parser.get_parsed_content("precision_inferer") is plain.parser.get_parsed_content("inferer")


def test_classifier_finetune_config_runs_its_engines_in_bf16(tmp_path):
    from tests.test_bundle import write_subjects

    subjects = write_subjects(tmp_path / "subjects", 6)
    workflow = create_workflow(
        FINETUNE,
        logging_file=False,
        dataset_dir=os.fspath(subjects),
        output_dir=os.fspath(tmp_path / "out"),
        init="scratch",
        precision="bf16",
        **FAST,
        **TINY_CLASSIFIER,
    )
    for key in ("train::trainer", "validate::evaluator"):
        engine = workflow.parser.get_parsed_content(key)
        assert isinstance(engine.inferer, AutocastInferer) and not engine.amp, key
        assert not isinstance(engine.inferer.inferer, ChannelsLastInferer), key


@pytest.mark.parametrize("configs", [TRAIN, INFER, FINETUNE], ids=["train_denoise", "inference", "finetune"])
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"precision": "fp16"}, "precision='fp16' needs a CUDA device, got cpu; use 'auto' on the CPU."),
        ({"channels_last": "false"}, "channels_last must be True or False, got 'false'"),
    ],
    ids=["fp16", "channels_last-string"],
)
def test_bad_switches_are_refused_when_the_config_loads(configs, setting, message, paired3, tmp_path):
    out = tmp_path / "out"
    settings = {"dataset_dir": os.fspath(paired3), "output_dir": os.fspath(out), "device": "cpu", **setting}
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps the config expression's error
        create_workflow(configs, "infer" if configs is INFER else "train", logging_file=False, **settings)
    cause = unwrap_config_error(raised.value)
    assert isinstance(cause, ValueError) and message in str(cause)
    assert not out.exists()  # refused before anything was written


def test_fp16_on_the_cpu_is_one_line_from_both_command_lines(paired3, tmp_path, capsys):
    scans = os.fspath(paired3 / "gaussian15")
    argv = ["denoise", scans, "--output", os.fspath(tmp_path / "o"), "--precision", "fp16", "--device", "cpu"]
    assert infer.main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: precision='fp16' needs a CUDA device, got cpu; use 'auto' on the CPU."
    with pytest.raises(ValueError, match="needs a CUDA device"):
        infer.denoise_scans(scans, tmp_path / "o", device="cpu", precision="fp16")
    status = bundle_main(
        ["--config_file", str(TRAIN), "--dataset_dir", os.fspath(paired3), "--precision", "fp16", "--device", "cpu"]
    )
    assert status == 1 and "error: precision='fp16' needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------- command line
@pytest.fixture
def captured(monkeypatch) -> list:
    """The (configs, overrides) each ``python -m pipeline.inference.infer`` call hands to the bundle."""
    calls: list = []

    def fake_run_config(configs, overrides, workflow_type="infer"):
        calls.append((configs, overrides))
        return infer.InferenceSummary()

    monkeypatch.setattr(runner, "_run_config", fake_run_config)
    return calls


def test_cli_flags_reach_the_config(captured, tmp_path):
    assert infer.main(["denoise", "in/", "--output", "out/"]) == 0
    assert not {"precision", "channels_last", "sw_overlap"} & set(captured[-1][1])  # the bundle's defaults stand
    flags = ["--precision", "bf16", "--channels-last", "--overlap", "0.25"]
    assert infer.main(["denoise", "in/", "--output", "out/", *flags]) == 0
    configs, overrides = captured[-1]
    assert configs[-1].endswith("inference.yaml")
    assert overrides["precision"] == "bf16" and overrides["channels_last"] is True and overrides["sw_overlap"] == 0.25
    assert infer.main(["denoise", "in/", "--output", "out/", "--set", "precision=bf16"]) == 0
    assert captured[-1][1]["precision"] == "bf16"  # --set still works when the flag is absent
    assert infer.main(["classify", "in/", "--output", "p.csv", "--precision", "bf16", "--channels-last"]) == 0
    configs, overrides = captured[-1]
    assert configs[-1].endswith("inference_classifier.yaml")
    assert overrides["precision"] == "bf16" and overrides["channels_last"] is True and "sw_overlap" not in overrides


@pytest.mark.parametrize(
    "argv",
    [
        ["denoise", "in/", "--output", "o", "--precision", "fp8"],
        ["denoise", "in/", "--output", "o", "--overlap", "1.5"],
        ["denoise", "in/", "--output", "o", "--overlap", "half"],
        ["classify", "in/", "--output", "p.csv", "--overlap", "0.25"],
    ],
    ids=["unknown-precision", "overlap-out-of-range", "overlap-not-a-number", "overlap-for-the-classifier"],
)
def test_cli_rejects_bad_switches(argv, captured, capsys):
    if argv[0] == "classify":  # both commands take --overlap; the classifier's refusal says why, with status 2
        assert infer.main(argv) == 2 and not captured
        assert "--overlap sets the denoiser's sliding windows" in capsys.readouterr().err
        return
    with pytest.raises(SystemExit) as exited:
        infer.main(argv)
    assert exited.value.code == 2 and not captured
    assert argv[-2].lstrip("-") in capsys.readouterr().err


def test_bundle_run_reads_lowercase_true_false_as_booleans(monkeypatch):
    import pipeline.bundle_run as bundle_run

    seen = {}
    monkeypatch.setattr(bundle_run, "run", lambda **kwargs: seen.update(kwargs))
    status = bundle_main(["--config_file", str(TRAIN), "--channels_last", "false", "--overwrite", "TRUE", "--x", "f"])
    assert status == 0
    assert seen["channels_last"] is False and seen["overwrite"] is True and seen["x"] == "f"


# ----------------------------------------------------------------------------------------------- precision: auto
@pytest.mark.parametrize(("native", "autocast"), [("0", False), ("1", True)], ids=["no-native-bf16", "native-bf16"])
def test_auto_precision_in_the_bundle_follows_the_hardware(native, autocast, paired3, monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, native)  # the hardware report's verdict, whatever this CPU is
    scans = os.fspath(paired3 / "gaussian15")
    workflow = create_workflow(INFER, "infer", logging_file=False, dataset_dir=scans, **FAST, **TINY_UNET)
    assert workflow.parser.get_parsed_content("precision") == "auto"  # the bundle's default
    inferer = workflow.parser.get_parsed_content("precision_inferer")
    if autocast:
        assert isinstance(inferer, AutocastInferer) and inferer.dtype == torch.bfloat16
        assert inferer.output_dtype == torch.float32
    else:  # float32: only denoising's channels-last layout around the sliding windows
        assert isinstance(inferer, ChannelsLastInferer)
        assert inferer.inferer is workflow.parser.get_parsed_content("inferer")


def test_cli_accepts_auto_precision(captured):
    assert infer.main(["denoise", "in/", "--output", "out/", "--precision", "auto"]) == 0
    assert captured[-1][1]["precision"] == "auto"


def test_monai_amp_still_ignores_the_cpu():
    """Still broken upstream? MONAI 1.6.1's ``amp=True`` autocasts only on CUDA, so a CPU network runs in float32. If
    this test fails, MONAI autocasts on the CPU and :class:`AutocastInferer` can be dropped for ``amp``."""
    from monai.engines import SupervisedEvaluator

    seen = []

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 1, 1)

        def forward(self, x):
            seen.append(torch.is_autocast_enabled("cpu"))
            return self.conv(x)

    x = torch.rand(1, 1, 4, 4, 4)
    batches = [{"image": x, "label": x}]
    with pytest.warns(UserWarning, match="CUDA is not available"):
        SupervisedEvaluator(device="cpu", val_data_loader=batches, network=Probe(), amp=True).run()
    assert seen == [False]
    AutocastInferer(SimpleInferer(), "cpu", torch.bfloat16)(x, Probe())
    assert seen == [False, True]  # the project's inferer does autocast on the CPU

"""``python -m pipeline.bundle_run`` as a user meets it: help, console output equal to MONAI's CLI, rank-0 logging.

The comparison runs one tiny epoch (six 24^3 volumes, a depth-10 ResUnet3D 4-8 channels wide) through both command
lines at once, in two processes, so it costs about one process start on 2 CPU cores.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import pytest

from pipeline.bundle_run import HELP, console_on_rank0_only, launcher_rank, main
from tests.test_bundle import BUNDLE, ROOT, TRAIN, write_paired

#: A console line that carries a loss or a metric (MONAI's StatsHandler and the evaluator's best-metric line).
_NUMBERS = re.compile(r"train_loss|Metrics --|Key metric|Got new best metric")
#: What precedes the message: the console's (logging.conf) "- name - INFO - " or train.log's "time INFO name: ".
_PREFIX = re.compile(r"^.*? INFO(?: - | [\w.]+: |: )")


def test_help_prints_the_usage_and_exits_0(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out == HELP
    for flag in ("--config_file", "--meta_file", "--logging_file", "--args_file", "--list_keys", "--KEY VALUE"):
        assert flag in out
    assert main(["-h"]) == 0


def test_statshandler_logger_keeps_its_console_handler(capsys):
    # MONAI's get_logger adds the stdout handler only to a logger that does not exist yet: main() must not create
    # StatsHandler's logger with a bare logging.getLogger (it did, and the loss lines went nowhere)
    from monai.handlers import StatsHandler

    name, loggers = "monai.handlers.StatsHandler", logging.root.manager.loggerDict
    previous = loggers.pop(name, None)
    try:
        assert main(["--config_file", json.dumps(TRAIN), "--num_epoch", "5"]) == 2  # runs main's logging set-up
        stats_logger = StatsHandler().logger
        assert any(isinstance(h, logging.StreamHandler) for h in stats_logger.handlers)
        stats_logger.info("Epoch: 1/1, Iter: 1/1 -- train_loss: 0.5")
        assert "train_loss: 0.5" in capsys.readouterr().out
    finally:  # the new logger's handler writes to this test's captured stdout: drop it
        loggers.pop(name, None)
        if previous is not None:
            loggers[name] = previous


def test_a_reported_error_is_logged_without_its_traceback(monkeypatch, capsys):
    import pipeline.bundle_run as bundle_run

    def failing_run(**kwargs):
        try:
            raise ValueError("bad value")
        except ValueError:
            logging.getLogger("ignite.engine.engine.SupervisedTrainer").exception("Exception: bad value")
            raise

    monkeypatch.setattr(bundle_run, "run", failing_run)
    handler = logging.StreamHandler(sys.stdout)
    logging.getLogger("ignite.engine.engine.SupervisedTrainer").addHandler(handler)
    try:
        assert main(["--config_file", json.dumps(TRAIN)]) == 1
    finally:
        logging.getLogger("ignite.engine.engine.SupervisedTrainer").removeHandler(handler)
    out, err = capsys.readouterr()
    assert "Exception: bad value" in out and "Traceback" not in out + err and "error: bad value" in err
    assert logging.getLogRecordFactory() is logging.LogRecord  # restored


def test_only_rank_0_logs_info_to_the_console(monkeypatch, caplog):
    log = logging.getLogger("pipeline.test_rank")
    monkeypatch.setenv("RANK", "1")
    assert launcher_rank() == 1
    with caplog.at_level(logging.INFO):
        with console_on_rank0_only():
            log.info("rank 1 info")
            log.warning("rank 1 warning")
        log.info("after the block")
        with console_on_rank0_only(0):
            log.info("rank 0 info")
    assert "rank 1 info" not in caplog.text
    assert {"rank 1 warning", "after the block", "rank 0 info"} <= {r.getMessage() for r in caplog.records}
    monkeypatch.setenv("RANK", "x")
    assert launcher_rank() == 0


def _number_lines(text: str) -> set[str]:
    """The messages (without time, logger and level) of the lines that carry a loss or a metric."""
    return {_PREFIX.sub("", line).strip() for line in text.splitlines() if _NUMBERS.search(line)}


@pytest.mark.slow
def test_console_and_train_log_carry_the_same_loss_and_metric_lines_as_monais_cli(tmp_path):
    data = write_paired(tmp_path / "data", 6)
    tiny = [
        "--config_file",
        json.dumps(TRAIN),
        "--dataset_dir",
        os.fspath(data),
        "--num_epochs",
        "1",
        "--batch_size",
        "2",
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
    clis = {
        "bundle_run": [sys.executable, "-m", "pipeline.bundle_run"],
        "monai": [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", os.fspath(BUNDLE)],
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.fspath(ROOT)}
    processes = {
        name: subprocess.Popen(
            [
                *cli,
                *tiny,
                "--ckpt_dir",
                os.fspath(tmp_path / name / "models"),
                "--output_dir",
                os.fspath(tmp_path / name),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, cli in clis.items()
    }
    consoles = {}
    for name, process in processes.items():
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err[-3000:]
        consoles[name] = out + err
    ours, monais = _number_lines(consoles["bundle_run"]), _number_lines(consoles["monai"])
    assert ours == monais
    assert sum("train_loss" in line for line in ours) == 2  # one line per iteration (3 volumes, batch 2)
    assert any("Epoch[1] Metrics -- psnr_brain" in line for line in ours)
    for name in clis:  # the run's log file (pipeline.training.runinfo.run_logged) holds the same lines
        assert _number_lines((tmp_path / name / "train.log").read_text()) == monais

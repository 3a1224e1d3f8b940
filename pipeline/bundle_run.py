r"""Run the bundle's workflows with every command-line override checked against the configs first.

``python -m monai.bundle run`` adds any override key it does not know as a new config entry, so a typo
(``--num_epoch 5`` for ``--num_epochs 5``) is silently ignored and the run trains with the default. This module
takes exactly the same arguments as ``python -m monai.bundle run`` (a run id, ``--config_file``, ``--meta_file``,
``--logging_file``, ``--args_file`` and ``--id value`` overrides), refuses an override whose key is not in the
merged configs, naming the closest existing keys, and then hands everything to MONAI unchanged::

    python -m pipeline.bundle_run --dataset_dir demo/cohort --num_epochs 5 \
        --config_file "['bundle/configs/common.yaml','bundle/configs/train_denoise.yaml']"

An override is accepted when its key exists, or when it adds an argument to a component (a section with a
``_target_``): a misspelt argument there makes the class itself raise a ``TypeError`` when it is built, so
nothing is silently dropped. Keys starting with ``+`` (MONAI's merge syntax) must name an existing section.

``bundle_root`` defaults to the folder above the first config file's ``configs/`` folder, so commands run from
any working directory write under the bundle (``bundle/models``, ``bundle/eval``), as ``--bundle_root bundle``
would with MONAI's own command.

Console output is MONAI's: the bundle's ``configs/logging.conf`` and MONAI's ``StatsHandler`` loggers print the
same loss and metric lines as ``python -m monai.bundle run``. Under ``torchrun`` only rank 0 logs to the console
(other ranks print warnings and errors only). ``--help`` prints the usage. With ``RESUNET3D_TINY=1`` in the
environment a training runs one epoch without loader workers (:mod:`pipeline.utils.tiny`), to check a command in
seconds.

Python callers (the demo, tests) use :func:`create_workflow`, which applies the same check and returns an
initialised ``monai.bundle.ConfigWorkflow``.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle.utils import ID_SEP_KEY

from pipeline.bundle_files import default_bundle_dir
from pipeline.errors import CheckpointError, ConfigComponentError, ConfigOverrideError, InputError, ScanFailuresError
from pipeline.utils.tiny import bundle_overrides

__all__ = [
    "BUNDLE_DIR",
    "HELP",
    "check_overrides",
    "config_ids",
    "console_on_rank0_only",
    "create_workflow",
    "default_bundle_root",
    "launcher_rank",
    "main",
    "run",
    "unwrap_config_error",
]

logger = logging.getLogger(__name__)

#: The bundle folder: ``<repo>/bundle`` in a checkout, the installed ``bundle`` package after ``pip install``.
BUNDLE_DIR: Path = default_bundle_dir()

_SEPARATORS = (ID_SEP_KEY, "#")

#: What ``python -m pipeline.bundle_run --help`` prints.
HELP = """\
usage: python -m pipeline.bundle_run [RUN_ID] --config_file FILES [--meta_file FILES] [--logging_file FILE]
                                     [--args_file FILE] [--tracking mlflow] [--list_keys] [--KEY VALUE ...]

Run a workflow of the bundle (bundle/configs) exactly as `python -m monai.bundle run` does, after checking that
every --KEY override names a key of the merged configs (a typo exits with status 2 and names the closest keys).

arguments (those of `python -m monai.bundle run`):
  RUN_ID, --run_id ID     config id of the expressions to run (default: run)
  --init_id, --final_id   config ids run first / last (default: initialize, finalize)
  --config_file FILES     config file(s), merged in order, common.yaml first:
                          "['bundle/configs/common.yaml','bundle/configs/train_denoise.yaml']"
  --meta_file FILES       metadata file(s) (default: <configs folder>/metadata.json)
  --logging_file FILE     logging config (default: <configs folder>/logging.conf)
  --args_file FILE        JSON/YAML file of default arguments
  --tracking mlflow       MONAI experiment tracking
  --bundle_root DIR       default: the folder above the first config file's configs/ folder
  --KEY VALUE             override any config key: --num_epochs 5, --network_def::model_depth 18,
                          --patch_size "[48, 48, 48]"; true/false are read as booleans
  --list_keys             print every key of the merged --config_file and exit
  -h, --help              print this help and exit

environment: RESUNET3D_TINY=1 runs one epoch without loader workers (a quick check of a command).

exit status: 0 done; 2 unknown override key, config component or missing config file; 1 bad input file,
checkpoint or value.

example:
  python -m pipeline.bundle_run --dataset_dir runs/cohort --clean_dir clean --num_epochs 2 \\
      --config_file "['bundle/configs/common.yaml','bundle/configs/train_denoise.yaml']"
"""

_TARGET = "_target_"


#: Messages of the ``RuntimeError``s MONAI wraps errors in: config expressions and components, and
#: ``monai.transforms.apply_transform`` (which wraps each transform of a ``Compose``, level by level).
_WRAPPER_MESSAGES = ("Failed to evaluate", "Failed to instantiate", "applying transform")


def unwrap_config_error(error: BaseException) -> BaseException:
    """The exception a config expression, component or transform raised, without MONAI's wrappers.

    MONAI re-raises any error of a ``$`` expression or ``_target_`` component, and any error of a transform run by
    ``apply_transform`` (``applying transform ...``), as a ``RuntimeError`` whose ``__cause__`` is the original;
    a researcher needs the original (e.g. an ``InputError`` naming the file).

    Args:
        error: the raised exception.

    Returns:
        The innermost cause behind MONAI's wrappers (``error`` itself when it is not wrapped).
    """
    seen = set()
    while (
        type(error) is RuntimeError
        and str(error).startswith(_WRAPPER_MESSAGES)
        and error.__cause__ is not None
        and id(error) not in seen
    ):
        seen.add(id(error))
        error = error.__cause__
    return error


def _keys_with_target(files: Sequence[str], override: Mapping[str, Any], target: str) -> list[str]:
    """The config keys whose component's ``_target_`` is ``target`` (as written or as MONAI resolved it)."""
    parser = ConfigParser(ConfigParser.load_config_files(list(files)))
    for key, value in override.items():
        if not key.startswith("+"):
            try:
                parser[key] = value
            except (KeyError, IndexError, TypeError, ValueError):
                continue
    config = parser.get()
    keys = []
    for key in config_ids(config):
        if not key.endswith(ID_SEP_KEY + _TARGET):
            continue
        _, value = _lookup(config, _split_id(key))
        if isinstance(value, str) and (value == target or target.endswith("." + value)):
            keys.append(key[: -len(ID_SEP_KEY + _TARGET)])
    return keys


def _close_names(target: str) -> list[str]:
    """Names in ``target``'s module close to its last part (``networks.ResUnet4D`` -> ``networks.ResUnet3D``)."""
    module_name, _, name = target.rpartition(".")
    if not module_name:
        return []
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return []
    public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n, None))]
    return [f"{module_name}.{n}" for n in difflib.get_close_matches(name, public, n=3, cutoff=0.6)]


def _component_error(error: BaseException, files: Sequence[str], override: Mapping[str, Any]) -> Exception | None:
    """A :class:`ConfigComponentError` for MONAI's unknown-``_target_`` / failed-instantiation errors, else None."""
    cause = unwrap_config_error(error)
    locate = re.match(r"Cannot locate class or function path: '([^']+)'", str(cause))
    if isinstance(cause, ModuleNotFoundError) and locate:
        target = locate.group(1)
        keys = ", ".join(_keys_with_target(files, override, target)) or "a component"
        close = _close_names(target)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return ConfigComponentError(f"{keys}: _target_ {target!r} is not an importable class or function{hint}")
    if not isinstance(cause, TypeError):
        return None
    link: BaseException | None = error
    while link is not None and link is not cause:
        failed = re.match(r"Failed to instantiate component '([^']+)'", str(link))
        if failed:
            target = failed.group(1)
            keys = ", ".join(_keys_with_target(files, override, target)) or "a component"
            first = str(cause).strip().splitlines()
            return ConfigComponentError(
                f"{keys}: cannot build {target} ({type(cause).__name__}: {first[0] if first else 'no message'})"
            )
        link = link.__cause__
    return None


def _split_id(key: str) -> list[str]:
    normalised = key.replace("#", ID_SEP_KEY)
    return [part for part in normalised.split(ID_SEP_KEY)]


def config_ids(config: Any, prefix: str = "") -> list[str]:
    """List every id of a config (nested keys joined with ``::``), depth first.

    Args:
        config: a parsed config (nested dicts and lists).
        prefix: id of ``config`` itself.

    Returns:
        The ids, e.g. ``["network_def", "network_def::_target_", "network_def::model_depth", ...]``.
    """
    ids: list[str] = []
    if isinstance(config, Mapping):
        items = [(str(k), v) for k, v in config.items()]
    elif isinstance(config, list):
        items = [(str(i), v) for i, v in enumerate(config)]
    else:
        return ids
    for key, value in items:
        full = f"{prefix}{ID_SEP_KEY}{key}" if prefix else key
        ids.append(full)
        ids.extend(config_ids(value, full))
    return ids


def _lookup(config: Any, parts: Sequence[str]) -> tuple[bool, Any]:
    """Return ``(found, parent_of_missing_part_or_value)`` for a split id."""
    node = config
    for depth, part in enumerate(parts):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            # a new argument of a component is legitimate (the class rejects a misspelt one when built)
            is_new_argument = depth == len(parts) - 1 and isinstance(node, Mapping) and _TARGET in node
            return is_new_argument, node
    return True, node


def check_overrides(config_files: str | Sequence[str], overrides: Mapping[str, Any]) -> None:
    """Raise if an override key is not in the merged configs (see the module docstring for the rule).

    Args:
        config_files: the config file(s), merged in order as MONAI merges them.
        overrides: ``{id: value}`` as given on the command line (``::`` or ``#`` separated ids).

    Raises:
        ConfigOverrideError: listing every unknown key with the closest existing ones.
        FileNotFoundError: if a config file does not exist.
    """
    files = [config_files] if isinstance(config_files, (str, os.PathLike)) else list(config_files)
    for file in files:
        if not Path(file).is_file():
            raise FileNotFoundError(f"config file {file} does not exist")
    config = ConfigParser.load_config_files(files)
    known: list[str] | None = None
    unknown: dict[str, list[str]] = {}
    for key in overrides:
        merge = key.startswith("+")
        found, _ = _lookup(config, _split_id(key[1:] if merge else key))
        if not found:
            if known is None:
                known = config_ids(config)
            plain = key[1:] if merge else key
            unknown[key] = difflib.get_close_matches(plain.replace("#", ID_SEP_KEY), known, n=3, cutoff=0.6)
    if unknown:
        raise ConfigOverrideError(unknown, [os.fspath(f) for f in files])


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if not Path(text).is_file() and "," in text:
            return [part.strip() for part in text.split(",")]
        return [text]
    return [os.fspath(v) for v in value]


def default_bundle_root(config_files: str | Sequence[str]) -> str:
    """The bundle folder of a config list: the parent of the first file's ``configs/`` folder.

    Args:
        config_files: the config file(s).

    Returns:
        The folder, as a string (the first file's folder when it is not named ``configs``).
    """
    first = Path(_as_list(config_files)[0]).resolve().parent
    return os.fspath(first.parent if first.name == "configs" else first)


def _with_model_card(files: Sequence[str], override: dict[str, Any]) -> dict[str, Any]:
    """The overrides plus the configuration the weights carry (inference configs with ``weights_config`` only)."""
    from pipeline.runtime.model_card import apply_model_card

    return apply_model_card(files, override)


def create_workflow(
    config_file: str | Sequence[str],
    workflow_type: str | None = "train",
    meta_file: str | Sequence[str] | None = None,
    logging_file: str | bool | None = None,
    initialize: bool = True,
    **override: Any,
) -> ConfigWorkflow:
    """Build a ``ConfigWorkflow`` after checking the overrides, with ``bundle_root`` defaulting to the bundle.

    Args:
        config_file: config file(s), merged in order (``common.yaml`` first).
        workflow_type: ``"train"``, ``"infer"`` or ``None`` (which properties ``check_properties`` checks).
        meta_file: metadata file(s); default ``<configs folder>/metadata.json``.
        logging_file: logging config; default ``<configs folder>/logging.conf``; ``False`` leaves logging alone.
        initialize: call ``initialize()`` before returning.
        **override: ``{id: value}`` config overrides (``"network_def::model_depth": 34``).

    Returns:
        The workflow (initialised when ``initialize``).

    Raises:
        ConfigOverrideError: for an override key that is not in the configs.
    """
    files = _as_list(config_file)
    check_overrides(files, override)
    override.setdefault("bundle_root", default_bundle_root(files))
    override = _with_model_card(files, override)
    workflow = ConfigWorkflow(
        config_file=files,
        meta_file=meta_file,
        logging_file=logging_file,
        workflow_type=workflow_type,
        **override,
    )
    if initialize:
        workflow.initialize()
    return workflow


def run(
    run_id: str | None = None,
    init_id: str | None = None,
    final_id: str | None = None,
    meta_file: str | Sequence[str] | None = None,
    config_file: str | Sequence[str] | None = None,
    logging_file: str | None = None,
    tracking: str | dict | None = None,
    args_file: str | None = None,
    **override: Any,
) -> None:
    """``monai.bundle.run`` with checked overrides and ``bundle_root`` defaulting to the bundle folder.

    Args:
        run_id: config id of the expressions to run (default ``run``).
        init_id: config id run first (default ``initialize``).
        final_id: config id run last (default ``finalize``).
        meta_file: metadata file(s).
        config_file: config file(s), merged in order.
        logging_file: logging config file.
        tracking: MONAI experiment-tracking settings.
        args_file: JSON/YAML file of default arguments (as in MONAI).
        **override: ``{id: value}`` config overrides.

    Raises:
        ConfigOverrideError: for an override key that is not in the configs.
        ConfigComponentError: for a component whose ``_target_`` cannot be imported or whose arguments it rejects.
        ValueError: if no config file is given.
    """
    from monai.bundle import run as monai_run

    files = _as_list(config_file)
    if args_file is not None and not files:
        files = _as_list(ConfigParser.load_config_file(args_file).get("config_file"))
    if not files:
        raise ValueError("config_file is required: --config_file \"['bundle/configs/common.yaml', '...']\"")
    check_overrides(files, override)
    override.setdefault("bundle_root", default_bundle_root(files))
    override = _with_model_card(files, override)
    override.update(bundle_overrides(ConfigParser.load_config_files(files)))  # RESUNET3D_TINY=1: one epoch
    given = {
        "run_id": run_id,
        "init_id": init_id,
        "final_id": final_id,
        "meta_file": meta_file,
        "logging_file": logging_file,
        "tracking": tracking,
        "args_file": args_file,
    }
    try:
        with console_on_rank0_only():
            monai_run(config_file=files, **{k: v for k, v in given.items() if v is not None}, **override)
    except (ModuleNotFoundError, RuntimeError) as error:
        component_error = _component_error(error, files, override)
        if component_error is None:
            raise
        raise component_error from error


def launcher_rank() -> int:
    """This process's global rank as set by ``torchrun`` (``RANK``); 0 when not launched by it."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@contextlib.contextmanager
def console_on_rank0_only(rank: int | None = None) -> Iterator[None]:
    """Silence INFO messages (and below) on every rank but 0 during the block; warnings and errors still show.

    ``logging.disable`` holds for every logger and survives the ``fileConfig`` of the bundle's ``logging.conf``,
    so the input summary, the engines' progress and "Got new best metric" appear once under ``torchrun``.

    Args:
        rank: the process's rank (default :func:`launcher_rank`).

    Yields:
        None.
    """
    rank = launcher_rank() if rank is None else rank
    previous = logging.root.manager.disable
    if rank > 0:
        logging.disable(max(previous, logging.INFO))
    try:
        yield
    finally:
        logging.disable(previous)


class _ReportedErrorFilter(logging.Filter):
    """Drops the traceback from a log record of an error that :func:`main` reports in one line itself.

    MONAI's ``StatsHandler`` logs an engine's exception with its traceback before re-raising it, to its own logger
    or (``name: null``, as this bundle's configs set it) to the engine's. :func:`main` applies the filter to every
    record it creates (a record factory) instead of to named loggers: creating ``StatsHandler``'s logger ahead of
    MONAI (``logging.getLogger``) made MONAI's ``get_logger`` skip its console handler, and the loss lines were lost.
    """

    def __init__(self, reported: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.reported = reported

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and isinstance(unwrap_config_error(error), self.reported):
            record.exc_info = None
            record.exc_text = None
        return True


def _list_keys(config_file: Any) -> None:
    config = ConfigParser.load_config_files(_as_list(config_file))
    for key in config_ids(config):
        print(key)


# fire reads `--overwrite false` as the (truthy) string "false"; only `False` is a bool
_BOOLEANS = {"true": "True", "false": "False"}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``python -m pipeline.bundle_run``); arguments as ``python -m monai.bundle run``.

    ``--list_keys`` prints every config id of the merged ``--config_file`` and exits. ``true``/``false`` in any
    case are read as booleans (``python -m monai.bundle run`` passes lowercase ones on as strings, which are truthy).

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        0 on success (and for ``--help``), 2 for an unknown override key, component ``_target_`` or a missing config
        file, 1 for a bad input file, checkpoint or value.
    """
    import fire

    args = [_BOOLEANS.get(a.lower(), a) for a in (sys.argv[1:] if argv is None else argv)]
    if "-h" in args or "--help" in args:
        sys.stdout.write(HELP)
        return 0
    if "--list_keys" in args:
        args.remove("--list_keys")
        fire.Fire(_list_keys, command=args, name="pipeline.bundle_run")
        return 0
    reported = (InputError, CheckpointError, ValueError, ScanFailuresError)
    quiet = _ReportedErrorFilter(reported)
    make_record = logging.getLogRecordFactory()

    def record_without_reported_traceback(*record_args: Any, **record_kwargs: Any) -> logging.LogRecord:
        record = make_record(*record_args, **record_kwargs)
        quiet.filter(record)
        return record

    logging.setLogRecordFactory(record_without_reported_traceback)
    try:
        fire.Fire(run, command=args, name="pipeline.bundle_run")
    except (ConfigOverrideError, ConfigComponentError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        cause = unwrap_config_error(error)
        if isinstance(cause, ScanFailuresError):
            print(cause.summary.report(), file=sys.stderr)
            return 1
        if isinstance(cause, (InputError, CheckpointError, ValueError)):
            print(f"error: {cause}", file=sys.stderr)
            return 1
        raise
    finally:
        logging.setLogRecordFactory(make_record)
    return 0


if __name__ == "__main__":
    # run the importable module's main, so exceptions raised by config expressions (which import
    # pipeline.bundle_run) are the same classes as the ones caught here
    from pipeline.bundle_run import main as _main

    sys.exit(_main())

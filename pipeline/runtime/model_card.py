"""Trained weights that carry their own configuration: ``<weights>.json`` beside them (nnU-Net's idea).

Training writes, beside the weights (``model.pt`` -> ``model.json``, ``classifier.pt`` -> ``classifier.json``), a
*model card*: everything inference needs to rebuild and feed the network, as a MONAI config overlay::

    {
      "model_card": {"format": 1, "task": "denoise", "weights": "model.pt", "versions": {...}, "noise": {...},
                     "intensity": {...}, "written": "..."},
      "network_def": {"_target_": "networks.ResUnet3D", "model_depth": 10, ...},
      "patch_size": [32, 32, 32], "spacing": null, "percentile_lower": null, "percentile_upper": 99.5
    }

(a classifier's card holds ``network_def``, ``class_names``, ``input_size`` and ``spacing``). Every key except
``model_card`` is a config id of the bundle, so the card is also a config file MONAI's own tools take, e.g.
``python -m monai.bundle ckpt_export --config_file "['configs/common.yaml','configs/inference.yaml',
'models/model.json']"`` builds the trained network and embeds ``model.json`` in the TorchScript file.

Inference (:func:`apply_model_card`, called by :func:`pipeline.bundle_run.create_workflow` and
:func:`pipeline.bundle_run.run` for configs that declare ``weights_config``) reads the card of ``ckpt_path``
(a ``.pt`` file's ``.json``, or the ``model.json`` embedded in a ``.ts`` TorchScript file) and sets those keys
from it, so ``--weights`` alone is enough. An explicit override of one of them that differs from the card is a
:class:`ModelConfigMismatchError` naming both values. Weights without a card (older runs) are used with the
configuration given, as before.

A card is data, never code: it is checked against :data:`pipeline.runtime.card_schema.CARD_SCHEMA` when read
(:func:`read_model_card`, :func:`load_torchscript`, :func:`build_network`), before any of it reaches a config, and
one that names a network off the allow-list, carries MONAI syntax (``$``, ``@``, ``%``, ``_requires_``...) or an
unknown key is an :class:`UnsafeModelCardError`. ``trust=True`` (``--trust-card``, config id
``trust_model_card``) applies a card from someone trusted unchecked, with a warning.

The network definition comes from the trained network object: :class:`networks.ResUnet3D` and
:func:`pipeline.runtime.classifier.build_classifier` record theirs as ``init_config``; for another network (e.g. MONAI's
``UNet`` swapped in by ``--network_def``) the card has no ``network_def`` and inference needs it given.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import NOT_SET, CheckpointError, ModelConfigMismatchError, UnsafeModelCardError
from pipeline.runtime.card_schema import CARD_FORMAT, card_problems, check_model_card
from pipeline.runtime.weights import card_path, load_network_state
from pipeline.utils.files import atomic_path
from pipeline.utils.versions import package_versions

__all__ = [
    "CARD_KEY",
    "CARD_NAME_IN_TORCHSCRIPT",
    "ModelConfigMismatchError",
    "UnsafeModelCardError",
    "apply_model_card",
    "build_network",
    "card_path",
    "copy_model_card",
    "export_torchscript",
    "load_torchscript",
    "network_config",
    "read_model_card",
    "write_model_card",
]

logger = logging.getLogger(__name__)

#: The card's own section (the other keys are config ids).
CARD_KEY = "model_card"
#: The card's name inside a TorchScript file (MONAI's ``extra_files``).
CARD_NAME_IN_TORCHSCRIPT = "model.json"
_TORCHSCRIPT_SUFFIXES = (".ts", ".pth.ts", ".torchscript")


_MISSING = NOT_SET


def _jsonable(value: Any) -> Any:
    """A JSON round trip (tuples become lists), the form every comparison uses."""
    return json.loads(json.dumps(value, default=lambda v: os.fspath(v) if isinstance(v, os.PathLike) else repr(v)))


def network_config(network: Any) -> dict[str, Any] | None:
    """The MONAI config (``_target_`` and arguments) that rebuilds a network, or ``None`` when it is unknown.

    Args:
        network: a network that records its ``init_config`` (ResUnet3D,
        :func:`pipeline.runtime.classifier.build_classifier`'s
            classifiers), possibly wrapped in ``DistributedDataParallel``/``DataParallel``, or a config mapping.

    Returns:
        A JSON-ready dictionary, or ``None``.
    """
    if isinstance(network, Mapping):
        return _jsonable(dict(network))
    target = getattr(network, "module", network)
    config = getattr(target, "init_config", None)
    return _jsonable(dict(config)) if isinstance(config, Mapping) else None


def _versions() -> dict[str, str]:
    versions = package_versions()
    return {k: versions[k] for k in ("resunet3d", "monai", "torch", "python") if k in versions}


def write_model_card(
    weights: str | os.PathLike,
    network: Any,
    task: str,
    config: Mapping[str, Any] | None = None,
    **info: Any,
) -> Path:
    """Write the card beside ``weights`` (atomically), before or after the weights themselves.

    Args:
        weights: the weights file the card describes (``model.pt``).
        network: the trained network (its ``init_config`` is recorded as ``network_def``) or its config mapping.
        task: ``"denoise"`` or ``"classify"``.
        config: the config ids inference needs (``patch_size``, ``spacing``, ``percentile_upper``,
            ``class_names``, ``input_size``...), recorded as top-level keys.
        **info: more facts for the ``model_card`` section (``noise``, ``intensity``, ``training``...).

    Returns:
        The card's path.
    """
    card: dict[str, Any] = {
        CARD_KEY: {
            "format": CARD_FORMAT,
            "task": task,
            "weights": Path(weights).name,
            "versions": _versions(),
            "written": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            **_jsonable(info),
        }
    }
    definition = network_config(network)
    if definition is None:
        logger.warning(
            "%s does not record its configuration (init_config): %s has no network_def, so inference with these "
            "weights needs the network given (--network_def / --set network_def=...)",
            type(getattr(network, "module", network)).__name__,
            card_path(weights),
        )
    else:
        card["network_def"] = definition
    card.update(_jsonable(dict(config or {})))
    path = card_path(weights)
    problems = card_problems(card)
    if problems:
        logger.warning(
            "the model card %s holds what a card may not (%s): inference will refuse it unless trusted (--trust-card)",
            path,
            "; ".join(f"{key}: {why}" for key, why in problems),
        )
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote the model card %s", path)
    return path


def _is_torchscript(path: Path) -> bool:
    return path.name.lower().endswith(_TORCHSCRIPT_SUFFIXES)


def _parse_card(text: str, source: str, trust: bool) -> dict[str, Any]:
    """A card's JSON, checked by the schema (:mod:`pipeline.runtime.card_schema`) unless ``trust``."""
    try:
        card = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"the model card {source} is not valid JSON ({error}); restore or delete it.") from error
    if not isinstance(card, dict) or CARD_KEY not in card:
        raise CheckpointError(f"{source} is not a model card (no {CARD_KEY!r} section).")
    if trust:
        problems = card_problems(card)
        logger.warning(
            "trusting the model card %s (--trust-card / trust_model_card): it is applied as MONAI config, so any "
            "expression or _target_ it carries runs%s",
            source,
            "; it holds " + "; ".join(f"{key}: {why}" for key, why in problems) if problems else "",
        )
    else:
        check_model_card(card, source)
    return card


def read_model_card(weights: str | os.PathLike, *, trust: bool = False) -> dict[str, Any] | None:
    """The card of a weights file: ``<weights>.json``, or the one embedded in a TorchScript file.

    The card is checked against :data:`pipeline.runtime.card_schema.CARD_SCHEMA` before it is returned: a card is
    data, and one that could make a MONAI config import or run anything is refused.

    Args:
        weights: ``model.pt`` (card ``model.json``) or ``model.ts`` (card inside).
        trust: return the card unchecked (with a warning): for a card from someone you trust that needs a network
            off the allow-list or MONAI expressions.

    Returns:
        The card, or ``None`` when there is none (weights from before cards existed).

    Raises:
        CheckpointError: a card that exists but is not valid JSON.
        UnsafeModelCardError: a card the schema refuses (naming the file, the key and why).
    """
    weights = Path(weights)
    if _is_torchscript(weights) and weights.is_file():
        try:
            with zipfile.ZipFile(weights) as archive:
                names = [n for n in archive.namelist() if n.endswith(f"extra/{CARD_NAME_IN_TORCHSCRIPT}")]
                text = archive.read(names[0]).decode("utf-8") if names else None
        except (zipfile.BadZipFile, UnicodeDecodeError) as error:
            raise CheckpointError(f"{weights} is not a TorchScript file ({error}).") from error
        source = _embedded(weights)
    else:
        path = card_path(weights)
        text = path.read_text(encoding="utf-8") if path.is_file() else None
        source = os.fspath(path)
    if text is None:
        return None
    return _parse_card(text, source, trust)


def _embedded(path: str | os.PathLike) -> str:
    return f"{os.fspath(path)} (embedded {CARD_NAME_IN_TORCHSCRIPT})"


def copy_model_card(source: str | os.PathLike, target: str | os.PathLike) -> Path | None:
    """Give weights derived from ``source`` (e.g. adapted to a site) its card, noting where they came from.

    Nothing is written when ``target`` does not exist (an adaptation that was refused) or ``source`` has no card.

    Args:
        source: the weights the new ones started from (their card is read).
        target: the new weights file.

    Returns:
        The card written, or ``None``.
    """
    card = read_model_card(source)
    if card is None or not Path(target).is_file():
        return None
    path = card_path(target)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({**card, "derived_from": os.fspath(source)}, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote the model card %s (from %s)", path, card_path(source))
    return path


def build_network(
    card: Mapping[str, Any], *, trust: bool = False, source: str | os.PathLike = "the model card"
) -> torch.nn.Module:
    """Build the card's network (random weights) from its ``network_def``.

    Args:
        card: a model card.
        trust: build it without checking the card against the schema (see :func:`read_model_card`).
        source: the card's file, named in errors.

    Returns:
        The network.

    Raises:
        CheckpointError: the card has no ``network_def``.
        UnsafeModelCardError: a card the schema refuses.
    """
    from monai.bundle import ConfigParser

    if not trust:
        check_model_card(card, source)
    if "network_def" not in card:
        raise CheckpointError("the model card has no network_def; give the network's configuration explicitly.")
    return ConfigParser({"network_def": dict(card["network_def"])}).get_parsed_content("network_def")


def _same_target(given: Any, own: Any) -> bool:
    if not (isinstance(given, str) and isinstance(own, str)):
        return given == own
    return given == own or given.endswith("." + own) or own.endswith("." + given)


def _differences(key: str, given: Any, own: Any, free: Sequence[str]) -> list[tuple[str, Any, Any]]:
    """Where an explicit value contradicts the card (only what the explicit value states is compared)."""
    given = _jsonable(given)
    if isinstance(given, Mapping) and isinstance(own, Mapping):
        found = []
        for sub, value in given.items():
            if sub in free:
                continue
            mine = own.get(sub, _MISSING)
            if sub == "_target_" and _same_target(value, mine):
                continue
            if mine is _MISSING or mine != value:
                found.append((f"{key}::{sub}", value, mine))
        return found
    return [] if given == own else [(key, given, own)]


def _lookup(card: Mapping[str, Any], key: str) -> Any:
    node: Any = card
    for part in key.replace("#", "::").split("::"):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _as_bool(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes", "on")


def apply_model_card(
    config_files: Sequence[str | os.PathLike], overrides: Mapping[str, Any], *, trust: bool | None = None
) -> dict[str, Any]:
    """The overrides with the weights' own configuration added, for configs that declare ``weights_config``.

    ``weights_config`` (a config section) names ``keys`` set from the card (an explicit override of one of them, or
    of a part such as ``network_def::model_depth``, must equal the card's value), ``defaults`` set from the card
    unless overridden, and ``aliases`` (``{id: card id}``, e.g.
    ``model_depth: network_def::model_depth``) checked like keys. With a TorchScript ``ckpt_path`` the network is
    the scripted module itself.

    The card is checked first (:func:`read_model_card`): one that could make the config import or run anything is
    refused, unless trusted by ``trust`` or the config id ``trust_model_card`` (both off by default).

    Args:
        config_files: the configs, in merge order.
        overrides: the explicit overrides (``bundle_root`` included).
        trust: apply the card unchecked; ``None``: the configs' ``trust_model_card`` (after the overrides).

    Returns:
        The overrides to run with (``overrides`` itself, copied, when there is no card or no ``weights_config``).

    Raises:
        ModelConfigMismatchError: an explicit value differs from the card's.
        CheckpointError: an unreadable card.
        UnsafeModelCardError: a card the schema refuses.
    """
    from monai.bundle import ConfigParser

    result = dict(overrides)
    parser = ConfigParser(ConfigParser.load_config_files([os.fspath(f) for f in config_files]))
    settings = parser.get("weights_config")
    if not isinstance(settings, Mapping):
        return result
    for key, value in overrides.items():
        if not key.startswith("+"):
            parser[key] = value
    try:
        weights = Path(os.fspath(parser.get_parsed_content("ckpt_path")))
    except Exception as error:  # an unresolvable ckpt_path is reported where the config uses it
        logger.debug("cannot resolve ckpt_path to look for a model card: %s", error)
        return result
    if trust is None:
        trust = _as_bool(parser.get("trust_model_card", False))
    card = read_model_card(weights, trust=trust)
    if card is None:
        logger.debug("%s has no model card (%s): using the configuration given", weights, card_path(weights).name)
        return result
    keys = list(settings.get("keys", []))
    defaults = list(settings.get("defaults", []))
    aliases = dict(settings.get("aliases", {}))
    free = ["patch_size"]  # a network's patch_size argument only checks the tile size; tiles may differ
    differences: list[tuple[str, Any, Any]] = []
    for given_key, value in overrides.items():
        key = aliases.get(given_key, given_key).replace("#", "::")
        top = key.split("::")[0]
        if top not in keys or top not in card:
            continue
        if key == top:
            differences += _differences(key, value, card[key], free)
        elif key.split("::")[-1] not in free:
            own = _lookup(card, key)
            if own is _MISSING or own != _jsonable(value):
                differences.append((given_key, _jsonable(value), own))
    if differences:
        raise ModelConfigMismatchError(
            f"{weights} (embedded)" if _is_torchscript(weights) else card_path(weights), differences
        )
    for key in keys + defaults:
        if key in card and key not in overrides:
            result[key] = card[key]
    if _is_torchscript(weights):
        result.setdefault(
            "network",
            "$pipeline.runtime.model_card.load_torchscript(@ckpt_path, map_location=@device, "
            f"trust={bool(trust)})[0].to(@device)",
        )
    info = card.get(CARD_KEY, {})
    logger.info(
        "%s carries its configuration (%s, trained with resunet3d %s, MONAI %s): %s",
        weights,
        info.get("task", "?"),
        info.get("versions", {}).get("resunet3d", "?"),
        info.get("versions", {}).get("monai", "?"),
        ", ".join(k for k in keys + defaults if k in card),
    )
    return result


def export_torchscript(
    weights: str | os.PathLike,
    filepath: str | os.PathLike,
    card: Mapping[str, Any] | None = None,
    *,
    trust: bool = False,
) -> Path:
    """Script a trained network and save it with its card embedded (MONAI's ``save_net_with_metadata``).

    Args:
        weights: the weights (``model.pt``; a flat state dict or a checkpoint with a ``model``/``network`` entry).
        filepath: the TorchScript file to write (``model.ts``).
        card: the card (default: the one beside ``weights``).
        trust: use the card unchecked (see :func:`read_model_card`).

    Returns:
        ``filepath``.

    Raises:
        CheckpointError: no card, or weights that do not fit its network.
        UnsafeModelCardError: a card the schema refuses.
    """
    from monai.data import save_net_with_metadata

    source = "the model card given" if card is not None else card_path(weights)
    card = dict(card) if card is not None else read_model_card(weights, trust=trust)
    if card is None:
        raise CheckpointError(f"{weights} has no model card ({card_path(weights).name}); nothing to embed.")
    network = build_network(card, trust=trust, source=source)
    key = "model"
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if "network" in state and isinstance(state["network"], Mapping):
        key = "network"
    try:
        network.load_state_dict(load_network_state(weights, key=key), strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"weights {weights} do not fit the network of their model card ({str(error).splitlines()[0]})."
        ) from error
    scripted = torch.jit.script(network.eval())
    filepath = Path(filepath)
    filepath.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(filepath) as tmp:
        save_net_with_metadata(
            scripted,
            os.fspath(tmp),
            include_config_vals=False,
            append_timestamp=False,
            meta_values=dict(card.get(CARD_KEY, {})),
            more_extra_files={CARD_NAME_IN_TORCHSCRIPT: json.dumps(card, indent=2).encode("utf-8")},
        )
    logger.info("exported %s with its model card to %s", weights, filepath)
    return filepath


def load_torchscript(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", *, trust: bool = False
) -> tuple[torch.jit.ScriptModule, dict[str, Any] | None]:
    """Load a TorchScript network and the card embedded in it (checked as :func:`read_model_card` checks it).

    Args:
        path: the ``.ts`` file.
        map_location: where the tensors go.
        trust: return the card unchecked (see :func:`read_model_card`).

    Returns:
        ``(network, card or None)``.

    Raises:
        CheckpointError: the file cannot be loaded as TorchScript, or its card is not valid JSON.
        UnsafeModelCardError: an embedded card the schema refuses.
    """
    extra = {CARD_NAME_IN_TORCHSCRIPT: ""}
    try:
        network = torch.jit.load(os.fspath(path), map_location=map_location, _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as error:
        raise CheckpointError(f"{path} cannot be loaded as TorchScript ({str(error).splitlines()[0]}).") from error
    text = extra[CARD_NAME_IN_TORCHSCRIPT]
    return network, (_parse_card(text, _embedded(path), trust) if text else None)

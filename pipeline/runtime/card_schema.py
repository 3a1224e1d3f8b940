"""What a model card may hold: a JSON Schema that admits data only, checked before any of it reaches a MONAI config.

A card (``model.json`` beside ``model.pt``, or embedded in a ``.ts`` file) travels with weights from someone else,
and :func:`pipeline.runtime.model_card.apply_model_card` turns its keys into config overrides. MONAI configs run
``$`` expressions, resolve ``@`` references and ``%`` macros, and import and call any ``_target_``; so a card is
accepted only when :data:`CARD_SCHEMA` admits it:

* the keys training writes, and no other (``model_card``, ``network_def``, ``patch_size``, ``spacing``,
  ``percentile_lower``, ``percentile_upper``, ``class_names``, ``input_size``, ``derived_from``);
* a ``network_def`` whose ``_target_`` is on the allow-list (:data:`NETWORK_TARGETS`: ResUnet3D, the classifier
  builder, the MONAI networks of :data:`networks.registry.NETWORKS`, and ``torch.nn.Identity``), with only that
  network's arguments, as literals of the expected types;
* no string that starts with ``$``, ``@`` or ``%`` and no key such as ``_target_``, ``_requires_``, ``_mode_`` or
  ``_disabled_`` anywhere below, however deeply nested.

:func:`card_problems` lists what a card breaks, each as ``(key path, why)``; :func:`check_model_card` raises
:class:`pipeline.errors.UnsafeModelCardError` naming the card file, the key and the reason.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from pipeline.errors import UnsafeModelCardError

__all__ = ["CARD_FORMAT", "CARD_SCHEMA", "NETWORK_TARGETS", "card_problems", "check_model_card"]

#: The card format this version writes and reads.
CARD_FORMAT = 1

_SYNTAX = r"^\s*[$@%]"
_SYNTAX_WHY = (
    "a string starting with '$', '@' or '%' is MONAI config syntax (an expression runs Python code, a reference or "
    "macro pulls in other config); a card holds plain values only"
)
_KEY_WHY = (
    "a key such as _target_, _requires_, _mode_ or _disabled_ makes MONAI import, call or skip something; a card "
    "names its network in network_def::_target_ only"
)
_TARGET_WHY = (
    "not on the allow-list of networks a card may build (networks.ResUnet3D, "
    "pipeline.runtime.classifier.build_classifier, networks.build_resnet, torch.nn.Identity and the MONAI networks of "
    "networks.registry, e.g. monai.networks.nets.UNet)"
)

_LITERAL: dict[str, Any] = {
    "description": _SYNTAX_WHY,
    "type": ["null", "boolean", "number", "string", "array", "object"],
    "not": {"type": "string", "pattern": _SYNTAX},
    "items": {"$ref": "#/$defs/literal"},
    "propertyNames": {"$ref": "#/$defs/plain_key"},
    "additionalProperties": {"$ref": "#/$defs/literal"},
}
_TEXT = {"description": _SYNTAX_WHY, "type": "string", "not": {"pattern": _SYNTAX}}
#: Every string anywhere in the card, whatever the key: no MONAI syntax.
_NO_SYNTAX: dict[str, Any] = {
    "description": _SYNTAX_WHY,
    "not": {"type": "string", "pattern": _SYNTAX},
    "items": {"$ref": "#/$defs/no_syntax"},
    "additionalProperties": {"$ref": "#/$defs/no_syntax"},
}
_PLAIN_KEY = {"$ref": "#/$defs/plain_key"}
_INT = {"type": "integer", "minimum": 1}
_INTS = {"type": ["integer", "array"], "minimum": 1, "items": _INT, "minItems": 1, "maxItems": 3}
_SIZE = {"type": ["null", "integer", "array"], "minimum": 1, "items": _INT, "minItems": 1, "maxItems": 3}
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
_PERCENTILE = {"type": ["null", "number"], "minimum": 0, "maximum": 100}
_DEPTHS = {"enum": [10, 18, 34, 50, 101, 152, 200]}
_LAYER = {"$ref": "#/$defs/literal"}  # norm / act: a name, or [name, {arguments}]

#: ``networks.build_resnet``'s arguments (ResUnet3D's encoder and the classifiers share them).
_RESNET_ARGUMENTS: dict[str, Any] = {
    "model_depth": _DEPTHS,
    "spatial_dims": {"enum": [2, 3]},
    "in_channels": _INT,
    "shortcut_type": {"enum": ["A", "B"]},
    "bias_downsample": {"type": "boolean"},
    "conv1_t_size": _INTS,
    "conv1_t_stride": _INTS,
    "widen_factor": _POSITIVE,
    "block_inplanes": {"type": "array", "items": _INT, "minItems": 4, "maxItems": 4},
    "no_max_pool": {"type": "boolean"},
    "norm": _LAYER,
    "act": _LAYER,
}

_RESUNET_ARGUMENTS: dict[str, Any] = {
    **_RESNET_ARGUMENTS,
    "out_channels": _INT,
    "levels": {"enum": [1, 2, 3, 4, "auto"]},
    "patch_size": _SIZE,
    "skip": {"enum": ["add", "cat"]},
    "upsample": {"enum": ["deconv", "interp"]},
    "residual_output": {"type": "boolean"},
    "attention": {"enum": ["none", "gate", "se"]},
    "bottleneck": {"enum": ["none", "transformer"]},
    "decoder_layers": {"type": ["null", "array"], "items": _INT, "minItems": 3, "maxItems": 3},
    "transformer_heads": _INT,
    "transformer_dim": {"type": ["null", "integer"], "minimum": 1},
    "transformer_layers": _INT,
}

#: :func:`pipeline.runtime.classifier.build_classifier` as its ``init_config`` records it: always ``init: scratch``
#: (the architecture only; a card never makes the builder read a file).
_CLASSIFIER_ARGUMENTS: dict[str, Any] = {**_RESNET_ARGUMENTS, "init": {"const": "scratch"}, "num_classes": _INT}


def _monai_arguments(factory: Any) -> dict[str, Any]:
    """A MONAI network's named constructor arguments, each a literal (``pretrained`` only ``false``)."""
    arguments: dict[str, Any] = {}
    for name, parameter in inspect.signature(factory).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        arguments[name] = {"const": False} if name == "pretrained" else _LAYER
    return arguments


def _allowed_networks() -> dict[str, dict[str, Any]]:
    """``{_target_: argument schemas}``: the project's networks and the MONAI networks of its registry."""
    from networks.registry import NETWORKS

    allowed: dict[str, dict[str, Any]] = {
        "networks.ResUnet3D": _RESUNET_ARGUMENTS,
        "networks.resunet.ResUnet3D": _RESUNET_ARGUMENTS,
        "pipeline.runtime.classifier.build_classifier": _CLASSIFIER_ARGUMENTS,
        "pipeline.training.classify.build_classifier": _CLASSIFIER_ARGUMENTS,  # cards written before it moved
        "networks.build_resnet": {**_RESNET_ARGUMENTS, "num_classes": {"type": ["null", "integer"], "minimum": 1}},
        "torch.nn.Identity": {},  # a pass-through network (tests, a pipeline dry run)
    }
    allowed["networks.resunet.build_resnet"] = allowed["networks.build_resnet"]
    for spec in NETWORKS.values():
        if spec.factory.__module__.startswith("monai."):
            arguments = _monai_arguments(spec.factory)
            allowed[f"monai.networks.nets.{spec.factory.__name__}"] = arguments
            allowed[f"{spec.factory.__module__}.{spec.factory.__qualname__}"] = arguments
    return allowed


def _network_schema(allowed: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    cases = [
        {
            "if": {"properties": {"_target_": {"const": target}}, "required": ["_target_"]},
            "then": {"properties": {"_target_": True, **arguments}, "additionalProperties": False},
        }
        for target, arguments in allowed.items()
    ]
    return {
        "type": "object",
        "required": ["_target_"],
        "properties": {"_target_": {"description": _TARGET_WHY, "enum": sorted(allowed)}},
        "propertyNames": {"description": _KEY_WHY, "not": {"pattern": "^_(?!target_$).*_$"}},
        "allOf": cases,
    }


#: The allow-list: the ``_target_`` values a card's ``network_def`` may name.
NETWORK_TARGETS: tuple[str, ...] = tuple(sorted(_allowed_networks()))

#: The card, as JSON Schema (draft 2020-12).
CARD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "resunet3d model card",
    "type": "object",
    "required": ["model_card"],
    "allOf": [{"$ref": "#/$defs/no_syntax"}],
    "propertyNames": {"$ref": "#/$defs/plain_key"},
    "additionalProperties": False,
    "properties": {
        "model_card": {
            "type": "object",
            "required": ["format", "task"],
            "propertyNames": {"$ref": "#/$defs/plain_key"},
            "additionalProperties": False,
            "properties": {
                "format": {"const": CARD_FORMAT, "description": f"this version reads card format {CARD_FORMAT}"},
                "task": {"enum": ["denoise", "classify"]},
                "weights": _TEXT,
                "written": _TEXT,
                "orientation": _TEXT,
                "versions": {"type": "object", "propertyNames": _PLAIN_KEY, "additionalProperties": _TEXT},
                "noise": {"type": "object", "$ref": "#/$defs/literal"},
                "intensity": {"type": "object", "$ref": "#/$defs/literal"},
                "training": {"type": "object", "$ref": "#/$defs/literal"},
            },
        },
        "network_def": {"$ref": "#/$defs/network"},
        "patch_size": _SIZE,
        "input_size": _SIZE,
        "spacing": {"type": ["null", "number", "array"], "exclusiveMinimum": 0, "items": _POSITIVE, "maxItems": 3},
        "percentile_lower": _PERCENTILE,
        "percentile_upper": _PERCENTILE,
        "class_names": {"type": "array", "items": _TEXT, "minItems": 1},
        "derived_from": _TEXT,  # adapt's copy_model_card: the weights these were adapted from
    },
    "$defs": {
        "literal": _LITERAL,
        "no_syntax": _NO_SYNTAX,
        "plain_key": {"description": _KEY_WHY, "type": "string", "not": {"pattern": "^_.*_$"}},
        "network": _network_schema(_allowed_networks()),
    },
}

_VALIDATOR = Draft202012Validator(CARD_SCHEMA)


def _path(error: ValidationError) -> str:
    return "::".join(str(part) for part in error.absolute_path) or "(the card)"


def _why(error: ValidationError) -> str:
    if error.validator == "additionalProperties" and error.validator_value is False:
        known = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(known))
        return f"unknown key(s) {extra} (allowed: {', '.join(known) or 'none'})"
    if error.validator == "propertyNames" or error.validator == "not":
        return f"{error.instance!r}: {error.schema.get('description', error.message)}"
    if error.validator in ("enum", "const") and "description" in error.schema:
        return f"{error.instance!r}: {error.schema['description']}"
    return error.message


def _leaves(error: ValidationError) -> list[ValidationError]:
    """The most specific errors (an ``allOf``/``then`` wrapper reports the errors inside it)."""
    if error.context:
        return [leaf for sub in error.context for leaf in _leaves(sub)]
    return [error]


def card_problems(card: Any) -> list[tuple[str, str]]:
    """What keeps a card from being data only, or from the schema.

    Args:
        card: the parsed card.

    Returns:
        ``(key path, why)`` pairs (``network_def::act::1::_target_``), sorted; empty for a card the schema admits.
    """
    found = {(_path(leaf), _why(leaf)) for error in _VALIDATOR.iter_errors(card) for leaf in _leaves(error)}
    return sorted(found)


def check_model_card(card: Any, source: str | os.PathLike) -> None:
    """Raise unless the schema admits ``card``.

    Args:
        card: the parsed card.
        source: the card file (named in the error).

    Raises:
        UnsafeModelCardError: naming ``source``, each key at fault and why.
    """
    problems = card_problems(card)
    if problems:
        raise UnsafeModelCardError(source, problems)

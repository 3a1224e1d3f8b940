"""Move encoder weights between a ResUnet3D and a MONAI ``ResNet`` classifier, strictly, in both directions."""

from __future__ import annotations

import logging

from monai.networks.nets import ResNet

from networks.pretrained import describe_state_dict
from networks.resunet import ResUnet3D

__all__ = ["encoder_to_classifier", "load_encoder_from_classifier"]

logger = logging.getLogger(__name__)


def encoder_to_classifier(unet: ResUnet3D, num_classes: int) -> ResNet:
    """A ``monai.networks.nets.ResNet`` classifier with copies of ``unet``'s encoder tensors and a new ``fc``.

    Args:
        unet: a (denoising-)trained ResUnet3D.
        num_classes: outputs of the new ``fc`` (logits).

    Returns:
        The classifier (see :meth:`ResUnet3D.classifier`).
    """
    net = unet.classifier(num_classes)
    logger.info("built a %d-class ResNet classifier from the ResUnet3D encoder", num_classes)
    return net


def load_encoder_from_classifier(unet: ResUnet3D, classifier: ResNet) -> ResUnet3D:
    """Copy every non-``fc`` tensor of a ResNet classifier (or feature extractor) into ``unet.encoder``, strictly.

    Args:
        unet: the ResUnet3D whose encoder is overwritten (the decoder is untouched).
        classifier: a ``monai.networks.nets.ResNet`` of the same configuration as the encoder.

    Returns:
        ``unet`` (modified in place).

    Raises:
        ValueError: if the tensors do not match one-to-one with equal shapes, describing both networks.
    """
    source = {k: v for k, v in classifier.state_dict().items() if not k.startswith("fc.")}
    expected = unet.encoder.state_dict()
    mismatch = set(source) != set(expected) or any(source[k].shape != expected[k].shape for k in expected)
    if mismatch:
        raise ValueError(
            f"the classifier is a {describe_state_dict(source)} but the ResUnet3D encoder is a"
            f" {describe_state_dict(expected)}; build both with the same configuration"
        )
    unet.encoder.load_state_dict(source, strict=True)
    logger.info("copied %d encoder tensors from the classifier into the ResUnet3D", len(source))
    return unet

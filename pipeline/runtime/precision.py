"""The speed switches of every workflow: ``precision`` (autocast) and ``channels_last`` (memory layout).

Training, evaluation and inference all run a network through the same two wrappers: :class:`AutocastInferer`
(bf16 on the CPU or CUDA, fp16 on CUDA, float32 outputs) and :class:`ChannelsLastInferer`; :func:`precision_settings`
turns the two switches into MONAI's ``amp`` flag and the wrapped inferer, and :func:`memory_format` converts the
network. ``precision: auto`` is resolved by :func:`pipeline.utils.precision.resolve_precision`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from monai.inferers import Inferer

from pipeline.utils.precision import PRECISIONS, HardwareReport, resolve_precision

__all__ = [
    "PRECISIONS",
    "AutocastInferer",
    "ChannelsLastInferer",
    "check_precision",
    "memory_format",
    "precision_settings",
]


def _cast_floating(output: Any, dtype: torch.dtype) -> Any:
    """``output`` with every floating-point tensor in it (also inside tuples, lists and dicts) cast to ``dtype``."""
    if isinstance(output, torch.Tensor):
        return output.to(dtype) if output.is_floating_point() else output
    if isinstance(output, Mapping):
        return type(output)((k, _cast_floating(v, dtype)) for k, v in output.items())
    if isinstance(output, (list, tuple)):
        return type(output)(_cast_floating(v, dtype) for v in output)
    return output


class AutocastInferer(Inferer):
    """Run another inferer under ``torch.autocast``: bf16 on CPU or CUDA, fp16 on CUDA.

    MONAI 1.6.1's ``amp=True`` hard-codes ``torch.autocast("cuda")`` with a CUDA ``GradScaler`` and does nothing on
    the CPU; this wrapper makes bf16 work on both (bf16 needs no loss scaling). The losses in
    :mod:`pipeline.training.losses` compute in float32, so only the network runs in reduced precision.

    Args:
        inferer: the wrapped inferer (``SimpleInferer``, ``SlidingWindowInferer``).
        device_type: ``"cpu"`` or ``"cuda"``.
        dtype: ``torch.bfloat16`` or ``torch.float16``.
        output_dtype: cast the floating-point outputs to this type after the autocast region (e.g.
            ``torch.float32``, so losses, metrics, ``Invertd`` and writers see full precision; the cast is
            differentiable); ``None`` returns them in the reduced dtype.

    Raises:
        ValueError: for a ``device_type`` other than ``"cpu"`` or ``"cuda"``, or a ``dtype`` other than
            ``torch.bfloat16`` or ``torch.float16``.
    """

    def __init__(
        self,
        inferer: Inferer,
        device_type: str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        output_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if device_type not in ("cpu", "cuda"):
            raise ValueError(f"device_type must be 'cpu' or 'cuda', got {device_type!r}.")
        if dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be torch.bfloat16 or torch.float16, got {dtype}.")
        self.inferer = inferer
        self.device_type = device_type
        self.dtype = dtype
        self.output_dtype = output_dtype

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> Any:
        """The wrapped inferer's output, computed under autocast (in ``output_dtype`` when it is set)."""
        with torch.autocast(self.device_type, dtype=self.dtype):
            output = self.inferer(inputs, network, *args, **kwargs)
        return output if self.output_dtype is None else _cast_floating(output, self.output_dtype)


class ChannelsLastInferer(Inferer):
    """Run another inferer with every network input in the channels-last memory layout.

    Each tensor the wrapped inferer hands to the network (the whole batch for ``SimpleInferer``, each batch of
    windows for ``SlidingWindowInferer``) is made ``torch.channels_last_3d`` (5-D, (B, C, H, W, D)) or
    ``torch.channels_last`` (4-D) before the call; other tensors pass unchanged. Convert the network once as well,
    ``network.to(memory_format=torch.channels_last_3d)``: its parameters keep their values and names, so its
    ``state_dict`` loads into (and from) a network in the default layout. oneDNN's CPU convolutions and cuDNN's
    tensor-core kernels run faster in this layout. The output tensors are returned contiguous (default layout), so
    what follows (losses, ``Invertd``, writers) sees ordinary tensors.

    Args:
        inferer: the wrapped inferer.
    """

    def __init__(self, inferer: Inferer) -> None:
        super().__init__()
        self.inferer = inferer

    @staticmethod
    def _channels_last(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() == 5:
            return value.contiguous(memory_format=torch.channels_last_3d)
        if isinstance(value, torch.Tensor) and value.dim() == 4:
            return value.contiguous(memory_format=torch.channels_last)
        return value

    @staticmethod
    def _contiguous(output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return output.contiguous()
        if isinstance(output, Mapping):
            return type(output)((k, ChannelsLastInferer._contiguous(v)) for k, v in output.items())
        if isinstance(output, (list, tuple)):
            return type(output)(ChannelsLastInferer._contiguous(v) for v in output)
        return output

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> Any:
        """The wrapped inferer's output, with ``network`` called on channels-last inputs.

        Args:
            inputs: the batch, (B, C, H, W, D).
            network: the network (or any callable the wrapped inferer accepts).
            *args: passed on to the wrapped inferer.
            **kwargs: passed on to the wrapped inferer.

        Returns:
            The wrapped inferer's output, contiguous.
        """

        def predictor(data: Any, *net_args: Any, **net_kwargs: Any) -> Any:
            return network(self._channels_last(data), *net_args, **net_kwargs)

        return self._contiguous(self.inferer(inputs, predictor, *args, **kwargs))


def check_precision(precision: str, device: str | torch.device, hardware: HardwareReport | None = None) -> str:
    """Resolve ``precision`` for ``device`` and refuse one it cannot run, before anything is built or written.

    Args:
        precision: ``"auto"`` (the fastest correct choice for the hardware, see
            :func:`pipeline.utils.precision.resolve_precision`), ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        device: the device the network runs on.
        hardware: the hardware ``"auto"`` decides for (default: this machine's).

    Returns:
        The precision to run: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    Raises:
        ValueError: for an unknown precision, or fp16 on a device that is not CUDA.
    """
    return resolve_precision(precision, device, hardware)


def memory_format(channels_last: bool) -> torch.memory_format:
    """The memory format a 3-D network is converted to: ``channels_last_3d`` when asked, else unchanged.

    Use it as ``network.to(device, memory_format=memory_format(channels_last))``: the conversion changes only
    how the 5-D weights are laid out in memory, never their names or values, so checkpoints load either way.

    Args:
        channels_last: convert to ``torch.channels_last_3d``.

    Returns:
        ``torch.channels_last_3d`` or ``torch.preserve_format``.

    Raises:
        ValueError: if ``channels_last`` is not a bool (e.g. the string ``"false"``, which is truthy: MONAI's
            command line passes ``--channels_last false`` as a string, ``--channels_last False`` as a bool).
    """
    if not isinstance(channels_last, bool):
        raise ValueError(
            f"channels_last must be True or False, got {channels_last!r} (on the command line: --channels_last True"
            " or --channels_last False, capitalised)."
        )
    return torch.channels_last_3d if channels_last else torch.preserve_format


def precision_settings(
    precision: str,
    device: str | torch.device,
    inferer: Inferer,
    *,
    channels_last: bool = False,
    training: bool = True,
    hardware: HardwareReport | None = None,
) -> tuple[bool, Inferer]:
    """Translate the speed switches ``precision`` and ``channels_last`` into MONAI's ``amp`` flag and an inferer.

    Whatever the precision, the inferer's floating-point outputs are float32 (except fp16 training, where MONAI's
    ``amp`` autocasts the loss too), so losses, metrics, ``Invertd`` and NIfTI writers see full precision.

    Args:
        precision: ``"auto"`` (bf16 where the CPU or GPU computes it natively, else fp32:
            :func:`pipeline.utils.precision.resolve_precision`), ``"fp32"``, ``"bf16"`` (autocast on the CPU or CUDA, no
            loss scaling) or ``"fp16"`` (CUDA only: for training MONAI's ``amp=True`` with its gradient scaler, for
            evaluation and inference fp16 autocast).
        device: the device the network runs on.
        inferer: the task's inferer.
        channels_last: run the network's inputs in ``channels_last_3d``
            (:class:`~pipeline.training.handlers.ChannelsLastInferer`; convert the network with :func:`memory_format`
            too).
        training: ``True`` for a ``SupervisedTrainer``, ``False`` for an evaluator or inference.
        hardware: the hardware ``"auto"`` decides for (default: this machine's).

    Returns:
        ``(amp, inferer)`` for ``SupervisedTrainer``/``SupervisedEvaluator`` (or ``inferer`` alone for
        :func:`pipeline.inference.infer.denoise_items`, where ``amp`` is always ``False`` with ``training=False``).

    Raises:
        ValueError: for an unknown precision, fp16 on a device that is not CUDA, or a ``channels_last`` that is not
            a bool.
    """
    precision = check_precision(precision, device, hardware)
    memory_format(channels_last)  # refuses a non-bool
    device = torch.device(device)
    if channels_last:
        inferer = ChannelsLastInferer(inferer)
    if precision == "fp16" and training:
        return True, inferer
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return False, AutocastInferer(inferer, device_type=device.type, dtype=dtype, output_dtype=torch.float32)
    return False, inferer

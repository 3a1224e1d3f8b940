"""Run a network only on the sliding windows that touch a mask: the guard's second pass, exact where it is read.

The guard (:mod:`pipeline.inference.guard`) reads the network's output of the perturbed scan only in the head mask.
A voxel's sliding-window output is the weighted mean of the windows that contain it, and every window that contains
a head voxel touches the head, so skipping the windows that lie wholly in the air leaves the output in the head
unchanged (up to float rounding of a smaller batch). MONAI's ``sliding_window_inference`` pads and cuts a
``condition`` tensor exactly as it does the image and passes each window's cut to the predictor, which is how
:class:`WithinMask` sees where each window lies. Outside the mask the output is zero there and meaningless.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["PairSingles", "WithinMask", "predict_within"]


class PairSingles(torch.nn.Module):
    """Run a batch of one window on the CPU as a pair, and keep the first output.

    PyTorch's CPU convolution picks its kernel by a size heuristic, and sends a small 3-D input of batch 1 (e.g. 16
    channels of a 32-voxel tile) to its slow native kernel (``aten::slow_conv3d_forward``) instead of oneDNN's; the
    small ResUnet3D then took 0.19-0.23 s per 32-cubed window at batch 1 against 0.04-0.05 s at batch 2 or 4 (1 thread,
    AMD EPYC, AVX2). Two copies cost less than one. The output is the network's (batch norm in eval mode and
    instance norm treat samples independently).

    Args:
        network: the network.
    """

    def __init__(self, network: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``network(x)``, a single CPU window run as a pair."""
        if x.shape[0] == 1 and x.device.type == "cpu":
            return self.network(torch.cat([x, x]))[:1]
        return self.network(x)


class WithinMask(torch.nn.Module):
    """A predictor for ``sliding_window_inference(..., condition=mask)`` that skips windows outside the mask.

    The network must map a window to an output shaped like it (a denoiser): a skipped window gives zeros. A single
    kept window runs as a pair (:class:`PairSingles`).

    Args:
        network: the network (or any callable on a batch of windows).
    """

    def __init__(self, network: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.network = PairSingles(network)

    def forward(self, window: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The network's output on the windows whose ``condition`` (the mask's cut) has a non-zero voxel."""
        keep = condition.reshape(condition.shape[0], -1).any(dim=1)
        if bool(keep.all()):
            return self.network(window)
        output = torch.zeros_like(window)
        if bool(keep.any()):
            output[keep] = self.network(window[keep]).to(output.dtype)
        return output


def predict_within(
    inferer: Callable[..., torch.Tensor],
    network: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    where: torch.Tensor,
) -> torch.Tensor:
    """``inferer(inputs, network)`` computed only on the windows that touch ``where``.

    Args:
        inferer: a MONAI inferer that passes a ``condition`` keyword to ``sliding_window_inference`` (e.g.
            ``SlidingWindowInferer``, or the project's precision and channels-last wrappers of it; a
            ``SimpleInferer`` runs the whole image, as its one window touches the mask).
        network: the network.
        inputs: ``(B, C, X, Y, Z)``.
        where: the mask, ``(X, Y, Z)`` or broadcastable to ``inputs`` after a leading ``(1, 1)``.

    Returns:
        The inferer's output: exact (up to rounding) at every voxel of ``where``, zero far from it.
    """
    condition = torch.as_tensor(where, device=inputs.device).to(inputs.dtype)
    condition = condition.reshape(1, 1, *condition.shape[-3:]).expand(inputs.shape[0], 1, *inputs.shape[-3:])
    return inferer(inputs, WithinMask(network), condition=condition)

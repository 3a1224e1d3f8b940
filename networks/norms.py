"""Instance norm that evaluates as a group norm of one channel per group: the same maths, faster without gradients.

PyTorch computes ``nn.InstanceNorm3d`` by folding the batch into the channels of a batch norm, which needs a
contiguous (B, C, ...) tensor: on the CPU it ran about 4x slower than ``F.group_norm`` with ``num_groups = C`` (the
same per-sample, per-channel statistics) and, on a ``channels_last_3d`` input, copied it to the default layout and
back around every norm. The classes here are ``nn.InstanceNorm2d`` / ``nn.InstanceNorm3d`` (same arguments, same
``state_dict``, ``isinstance`` of torch's) whose forward takes the group-norm kernel when no gradient is recorded
(evaluation, inference) and the running statistics are not tracked; with gradients (training) it is torch's own
path, whose backward is the faster one. Both give the same output up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InstanceNorm2d", "InstanceNorm3d"]


class _EvaluatedAsGroupNorm:
    """The forward step shared by both classes (a mixin, so TorchScript compiles it as the module's own method)."""

    def _apply_instance_norm(self, input: torch.Tensor) -> torch.Tensor:
        """The instance norm of a batched ``input``: a one-channel-per-group ``group_norm`` when it may."""
        if torch.is_grad_enabled() or self.track_running_stats:
            return F.instance_norm(
                input,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                self.training or not self.track_running_stats,
                self.momentum if self.momentum is not None else 0.0,
                self.eps,
            )
        return F.group_norm(input, self.num_features, self.weight, self.bias, self.eps)


class InstanceNorm2d(_EvaluatedAsGroupNorm, nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` that evaluates through ``F.group_norm`` (module docstring)."""


class InstanceNorm3d(_EvaluatedAsGroupNorm, nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` that evaluates through ``F.group_norm`` (module docstring)."""

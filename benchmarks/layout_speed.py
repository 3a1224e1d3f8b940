"""The ready denoiser's time per sliding window in both memory layouts, with torch's instance norm and the project's.

Run: ``python -m benchmarks.layout_speed [--batch 4] [--repeats 15] [--threads 1] [--out ...json]``.

The shipped small ResUnet3D (``pipeline/inference/ready``) denoises a batch of ``--batch`` random 32^3 windows under
``torch.inference_mode`` in four configurations, taken in turn ``--repeats`` times so that a busy machine slows them
alike: the default layout or ``channels_last_3d`` (network and input), with the instance norm evaluated by torch
(``F.instance_norm``) or as a one-channel-per-group group norm (the project's, ``networks.norms``). It prints the median
milliseconds per window, each configuration's speed-up over torch's default-layout path (all measured side by side in
one run), and how far each output is from that path's.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from typing import Any

import torch

from benchmarks._common import announce, default_out, format_table, machine_info, write_json

__all__ = ["main"]


def _torch_norm(network: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``network`` whose instance norms evaluate through ``F.instance_norm`` (torch's own path)."""
    from networks.norms import InstanceNorm3d

    plain = copy.deepcopy(network)
    for module in plain.modules():
        if isinstance(module, InstanceNorm3d):
            module.__class__ = torch.nn.InstanceNorm3d
    return plain


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line (module docstring)."""
    from benchmarks.real_scans.network import load_denoiser
    from pipeline.inference.ready import READY_DIR

    parser = argparse.ArgumentParser(prog="python -m benchmarks.layout_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="windows per network call (the bundle's sw_batch_size)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(default_out("layout_speed")))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    announce("benchmarks.layout_speed", f"the ready denoiser on {args.batch} x 32^3 windows, 4 ways", "about 1 min")
    network = load_denoiser(READY_DIR / "denoiser.pt")[0]
    ours, theirs = network, _torch_norm(network)
    last = torch.channels_last_3d
    configs = {
        "default layout, torch's instance norm": (theirs, False),
        "default layout, group-norm instance norm": (ours, False),
        "channels-last, torch's instance norm": (copy.deepcopy(theirs).to(memory_format=last), True),
        "channels-last, group-norm instance norm (the bundle's)": (copy.deepcopy(ours).to(memory_format=last), True),
    }
    x = torch.rand(args.batch, 1, 32, 32, 32)
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    outputs = {}
    with torch.inference_mode():
        for name, (net, channels_last) in configs.items():
            outputs[name] = net(x.contiguous(memory_format=last) if channels_last else x).contiguous()
        for _ in range(args.repeats):
            for name, (net, channels_last) in configs.items():
                data = x.contiguous(memory_format=last) if channels_last else x
                start = time.perf_counter()
                net(data)
                seconds[name].append(time.perf_counter() - start)
    reference = next(iter(outputs.values()))
    base = statistics.median(next(iter(seconds.values())))
    rows = [
        {
            "configuration": name,
            "ms per window": round(1000 * statistics.median(times) / args.batch, 1),
            "speed-up": round(base / statistics.median(times), 2),
            "max |output - torch's|": f"{float((outputs[name] - reference).abs().max()):.1e}",
        }
        for name, times in seconds.items()
    ]
    print(format_table(rows, list(rows[0])))
    result = {
        "benchmark": "layout_speed",
        "command": "python -m benchmarks.layout_speed " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "batch": args.batch,
        "repeats": args.repeats,
        "rows": rows,
    }
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()

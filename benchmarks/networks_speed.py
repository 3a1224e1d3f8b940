"""Forward+backward speed of ResUnet3D-10/18/34 beside MONAI's UNet, BasicUNet and FlexibleUNet(resnet18).

Every network is measured side by side in one run, on the same device and input (default: CPU, 64^3, batch 2,
one channel), as seconds per training step (forward, mean-squared loss, backward; median of ``--steps`` after
``--warmup``). Then ``torch.compile`` is checked on ResUnet3D-18: compiled output == eager output.

    python benchmarks/networks_speed.py                 # the table, ratios and the torch.compile check
    python benchmarks/networks_speed.py --params        # the README's parameter-count table only (no timing)
    python benchmarks/networks_speed.py --quick         # a smoke run: 32^3, batch 2, one step each, no compile
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from networks import ResUnet3D, get_network

__all__ = ["count_parameters", "main", "parameter_table", "time_step"]


def count_parameters(net: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


def parameter_table() -> str:
    """Markdown table of ResUnet3D parameter counts, depths 10/18/34/50 at levels 4 and 3 (built on the meta device)."""
    rows = [
        "| depth | levels=4: trained | levels=3: trained | levels=3: unrun layer4 alone (stored, frozen) |",
        "|---|---|---|---|",
    ]
    with torch.device("meta"):
        for depth in (10, 18, 34, 50):
            four, three = ResUnet3D(model_depth=depth, levels=4), ResUnet3D(model_depth=depth, levels=3)
            stored = count_parameters(three) - count_parameters(three, trainable_only=True)
            rows.append(
                f"| {depth} | {count_parameters(four, True) / 1e6:.1f} M | {count_parameters(three, True) / 1e6:.1f} M"
                f" | {stored / 1e6:.1f} M |"
            )
    return "\n".join(rows)


def time_step(net: nn.Module, x: torch.Tensor, steps: int, warmup: int) -> float:
    """Median seconds of one forward + MSE loss + backward step."""
    net.train()
    times = []
    for i in range(warmup + steps):
        net.zero_grad(set_to_none=True)
        start = time.perf_counter()
        net(x).square().mean().backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _networks() -> dict[str, nn.Module]:
    return {
        "ResUnet3D-10": ResUnet3D(model_depth=10),
        "ResUnet3D-18": ResUnet3D(model_depth=18),
        "ResUnet3D-34": ResUnet3D(model_depth=34),
        "MONAI UNet": get_network("unet"),
        "MONAI BasicUNet": get_network("basicunet"),
        "MONAI FlexibleUNet(resnet18)": get_network("flexibleunet", backbone="resnet18"),
    }


def check_compile(device: torch.device, size: int) -> None:
    """Compile ResUnet3D-18 with ``torch.compile`` and compare one forward with eager (eval mode)."""
    torch.manual_seed(0)
    net = ResUnet3D(model_depth=18).to(device).eval()
    x = torch.randn(1, 1, size, size, size, device=device)
    start = time.perf_counter()
    compiled = torch.compile(net)
    with torch.no_grad():
        out = compiled(x)
        first = time.perf_counter() - start
        ref = net(x)
    err = (out - ref).abs().max().item()
    ok = out.shape == x.shape and torch.allclose(out, ref, rtol=1e-3, atol=1e-4)
    print(f"torch.compile ResUnet3D-18 at {size}^3: first call {first:.1f} s, max |compiled - eager| = {err:.2e}")
    print("torch.compile check:", "OK" if ok else "MISMATCH")
    if not ok:
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="cubic input size (default 64)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per network (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--params", action="store_true", help="print the parameter-count table and exit")
    parser.add_argument("--skip-compile", action="store_true", help="skip the torch.compile check")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 32^3, batch 2, one timed step and no warm-up per network, no torch.compile check",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.steps, args.warmup, args.skip_compile = 32, 2, 1, 0, True
    if args.params:
        print(parameter_table())
        return
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, args.size, args.size, args.size, device=device)
    from pipeline.utils.precision import detect_hardware

    print(
        f"forward+backward in float32 of 6 networks, {args.size}^3, batch {args.batch}, device"
        f" {device} ({torch.get_num_threads()} threads), median of {args.steps} steps after {args.warmup} warm-up;"
        f" a line per network (about a minute in all on 2 cores at 64^3)\nCPU: {detect_hardware().describe_cpu()}"
    )
    results = {}
    for name, net in _networks().items():
        results[name] = (count_parameters(net), time_step(net.to(device), x, args.steps, args.warmup))
        print(f"  measured {name}: {results[name][1]:.3f} s/step", flush=True)
    base = results["ResUnet3D-18"][1]
    print("| network | parameters | s / step | vs ResUnet3D-18 |")
    print("|---|---|---|---|")
    for name, (params, seconds) in results.items():
        print(f"| {name} | {params / 1e6:.1f} M | {seconds:.3f} | {seconds / base:.2f}x |")
    if not args.skip_compile:
        check_compile(device, 32)


if __name__ == "__main__":
    main()

"""Training throughput: samples/s and achieved GFLOP/s of a training step, as a fraction of the conv3d ceiling.

Run: ``python -m benchmarks.throughput [--quick] [--patch 32] [--batch 4] [--out benchmarks/results/throughput.json]``.

The *ceiling* is one ``Conv3d(32, 32, 3, padding=1)`` forward + backward (input and weight gradients) on a (2, 32,
48, 48, 48) tensor, in the NCDHW layout and in ``channels_last_3d``, in float32 and under bf16 autocast (each
variant of a step is compared with the ceiling of its own layout and precision); it is measured at the start and
again at the end of the run (the machine is shared, so both are reported and the higher one is the ceiling). A
*training step* is forward, L1 loss, backward and an Adam step on a (batch, 1, patch, patch, patch) input, for
MONAI's UNet, BasicUNet, FlexibleUNet(resnet18) and ResUnet3D (configurations in
``benchmarks._common.build_denoiser``; ResUnet3D as the demo trains it unless ``--resunet`` says otherwise), at the
demo's patch (32^3, 4 per step). FLOPs are counted once per step with ``torch.utils.flop_counter.FlopCounterMode``
(convolutions and matrix products, forward and backward; norms and activations are not counted) and divided by the
median step time.

Speed knobs measured for every network: ``channels_last_3d`` (network and input), bf16 autocast on the CPU, both, and,
with ``--compile``, ``torch.compile`` (its compile time is reported separately). By default the bf16 variants run only
on a CPU with native bf16 (:mod:`pipeline.utils.precision`'s rule, the one ``precision: auto`` follows): elsewhere
bf16 is
emulated, about 40x slower, and ``--variants bf16`` still measures it. The run starts with what it will measure, the
CPU and an estimate of its duration, and prints a line per measurement.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from benchmarks._common import (
    Progress,
    announce,
    benchmark_precision,
    build_denoiser,
    default_out,
    expected_duration,
    format_table,
    machine_info,
    write_json,
)

__all__ = ["NETWORKS", "VARIANTS", "conv3d_ceiling", "count_flops", "default_variants", "main", "training_step_rate"]

NETWORKS = ("unet", "basicunet", "flexibleunet", "resunet3d")
#: variant name -> (channels_last_3d, bf16 autocast, torch.compile)
VARIANTS = {
    "fp32": (False, False, False),
    "channels_last_3d": (True, False, False),
    "bf16": (False, True, False),
    "bf16_channels_last_3d": (True, True, False),
}
#: the conv3d ceiling each variant is measured against: (channels_last_3d, bf16) -> name
CEILINGS = {(False, False): "ncdhw", (True, False): "channels_last_3d", (False, True): "bf16", (True, True): "bf16_cl"}
#: rough seconds per float32 training step (forward, loss, backward, Adam) at 32^3 x 4 on 2 idle cores with AVX-512,
#: for the estimate printed at the start: the README's 64^3 x 2 rows of the 2-core AMD EPYC with AVX512-BF16, divided by
#: 4, and ResUnet3D as the demo trains it (0.49 s measured on a 2-core AMD EPYC with AVX2 only, issue 11, halved)
_STEP_S = {"unet": 0.08, "basicunet": 1.05, "flexibleunet": 0.45, "resunet3d": 0.25}
#: seconds of one 48^3 ceiling convolution forward + backward on 2 idle AVX-512 cores (37 GFLOP at about 200 GFLOP/s)
_CEILING_S = 0.18
#: native bf16 autocast against float32, and AVX2 only against AVX-512 (float32), for the same estimate
_BF16_FACTOR, _AVX2_FACTOR = 0.55, 2.0


def default_variants(precision: str) -> list[str]:
    """The variants measured by default: all four where bf16 runs natively (``precision`` bf16), else fp32 ones.

    Args:
        precision: the resolved ``auto`` precision of this CPU (:func:`benchmarks._common.benchmark_precision`).

    Returns:
        Variant names of :data:`VARIANTS`.
    """
    return list(VARIANTS) if precision == "bf16" else [v for v, (_, bf16, _) in VARIANTS.items() if not bf16]


def _reference_seconds(
    networks: list[str],
    variants: list[tuple[str, bool, bool, bool]],
    patch: int,
    batch: int,
    steps: int,
    conv_size: int,
    ceilings: int,
    quick: bool,
) -> dict[str, float]:
    """Rough seconds of a run on 2 idle cores, with native bf16 and with AVX2 only (:func:`expected_duration`)."""
    scale = (patch / 32) ** 3 * batch / 4 * (0.1 if quick else 1.0)  # the small networks: about a tenth
    passes = steps + 3  # warm-up, FLOP count, timed steps (and building the network)
    native = sum(
        _STEP_S[name] * scale * passes * (_BF16_FACTOR if bf16 else 1.0)
        for name in networks
        for _, _, bf16, _ in variants
    )
    fp32 = sum(_STEP_S[name] * scale * passes for name in networks for _, _, bf16, _ in variants if not bf16)
    ceiling = 2 * ceilings * (steps + 2) * _CEILING_S * (conv_size / 48) ** 3
    startup = 5.0  # importing torch and MONAI, building the networks
    return {"native": startup + native + ceiling, "avx2": startup + (fp32 + ceiling) * _AVX2_FACTOR}


def count_flops(fn: Callable[[], Any]) -> int:
    """Count the floating-point operations ``fn`` performs (torch's ``FlopCounterMode``: convolutions, matmuls).

    Args:
        fn: the callable (a forward + backward, typically).

    Returns:
        The total FLOP count (multiply-add = 2 FLOPs).
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def _median_time(fn: Callable[[], Any], steps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def conv3d_ceiling(
    size: int = 48, batch: int = 2, channels_last: bool = False, steps: int = 5, bf16: bool = False
) -> dict[str, float]:
    """Measure a 32 -> 32, 3^3 convolution's forward + backward rate.

    Args:
        size: spatial edge of the input (voxels).
        batch: batch size.
        channels_last: use ``torch.channels_last_3d`` for the input and the weights.
        steps: timed repetitions (median taken).
        bf16: run the convolution under ``torch.autocast("cpu", dtype=torch.bfloat16)``.

    Returns:
        ``{"gflops": achieved GFLOP/s, "seconds": median seconds per forward + backward, "flop": FLOPs per step}``.
    """
    conv = torch.nn.Conv3d(32, 32, 3, padding=1)
    x = torch.randn(batch, 32, size, size, size)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)

    def step() -> None:
        conv.zero_grad(set_to_none=True)
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = conv(x)
        out.float().sum().backward()

    flop = count_flops(step)
    seconds = _median_time(step, steps)
    return {"gflops": flop / seconds / 1e9, "seconds": seconds, "flop": flop}


def training_step_rate(
    model: torch.nn.Module,
    patch: int,
    batch: int,
    steps: int,
    channels_last: bool = False,
    bf16: bool = False,
    compile_model: bool = False,
) -> dict[str, float]:
    """Measure a full training step (forward, L1 loss, backward, Adam) of a 1-channel 3-D denoiser.

    Args:
        model: the network; it is put in training mode (and converted to ``channels_last_3d`` if asked).
        patch: spatial edge of the random input patch.
        batch: batch size.
        steps: timed steps (median taken) after one warm-up step.
        channels_last: convert the network and input to ``channels_last_3d``.
        bf16: run forward and loss under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
        compile_model: wrap the network with ``torch.compile`` (first step's extra time reported as compile time).

    Returns:
        ``{"seconds", "samples_per_s", "gflop_per_step", "gflops", "compile_s"}``.
    """
    torch.manual_seed(0)
    model.train()
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.rand(batch, 1, patch, patch, patch).contiguous(memory_format=fmt)
    y = torch.rand(batch, 1, patch, patch, patch).contiguous(memory_format=fmt)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    flop = count_flops(lambda: torch.nn.functional.l1_loss(model(x), y).backward())
    optimizer.zero_grad(set_to_none=True)
    net = torch.compile(model) if compile_model else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.l1_loss(net(x).float(), y)
        loss.backward()
        optimizer.step()

    compile_s = 0.0
    if compile_model:
        start = time.perf_counter()
        step()
        compile_s = time.perf_counter() - start
    seconds = _median_time(step, steps)
    return {
        "seconds": seconds,
        "samples_per_s": batch / seconds,
        "gflop_per_step": flop / 1e9,
        "gflops": flop / seconds / 1e9,
        "compile_s": compile_s,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: small networks, 16^3 x 2 patches (32^3 for basicunet and flexibleunet), 1 step, 8^3 ceiling"
        " input",
    )
    parser.add_argument("--patch", type=int, default=32, help="training patch edge (voxels; the demo's is 32)")
    parser.add_argument("--batch", type=int, default=4, help="patches per step (the demo's: 2 volumes x 2)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (median)")
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        choices=VARIANTS,
        help="default: all four on a CPU with native bf16, fp32 and channels_last_3d elsewhere",
    )
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile)")
    parser.add_argument(
        "--resunet",
        type=json.loads,
        default=None,
        help="JSON of ResUnet3D arguments overriding the bundle's network_def (default: the demo's denoiser; {}: the"
        " bundle's)",
    )
    parser.add_argument("--out", default=str(default_out("throughput")))
    return parser


def _variants(args: argparse.Namespace) -> tuple[list[tuple], str, bool]:
    """The variants to measure (``(name, channels_last, bf16, compile)``), the precision note, bf16 emulated?"""
    auto, note = benchmark_precision("auto")
    if args.variants is None:
        args.variants = default_variants(auto)
        if auto != "bf16":
            note += "; bf16 variants skipped (--variants bf16 bf16_channels_last_3d measures them anyway)"
    emulated = any(VARIANTS[v][1] for v in args.variants) and auto != "bf16"
    if emulated:
        note += "; bf16 variants asked for: EMULATED on this CPU, about 40x slower than fp32"
    variants = [(v, *VARIANTS[v]) for v in args.variants]
    if args.compile:
        variants.append(("compile", False, False, True))
    return variants, note, emulated


def _ceilings(ceilings: dict, conv_size: int, steps: int, when: str, progress: Progress) -> dict:
    out = {}
    for name, (channels_last, bf16) in ceilings.items():
        out[name] = conv3d_ceiling(conv_size, steps=steps, channels_last=channels_last, bf16=bf16)
        progress.step(f"conv3d ceiling {name} ({when}): {out[name]['gflops']:.1f} GFLOP/s")
    return out


def _step_rows(args: argparse.Namespace, variants: list, sizes: tuple[int, int, int], progress: Progress) -> list:
    """One row per network and variant (``sizes``: patch, batch, timed steps)."""
    patch, batch, steps = sizes
    rows = []
    for name in args.networks:
        for variant, channels_last, bf16, compile_model in variants:
            model = build_denoiser(
                name, "small" if args.quick else "default", **args.resunet if name == "resunet3d" else {}
            )
            params = sum(p.numel() for p in model.parameters())
            rate = training_step_rate(model, patch, batch, steps, channels_last, bf16, compile_model)
            rows.append({"network": name, "variant": variant, "params_m": round(params / 1e6, 2), **rate})
            progress.step(f"{name} {variant}: {rate['seconds']:.3f} s/step, {rate['gflops']:.1f} GFLOP/s")
    return rows


def _print_tables(rows: list, ceiling: dict, runs: dict, sizes: tuple[int, int, int]) -> None:
    print("\nconv3d 32->32 3^3 fwd+bwd ceiling (GFLOP/s; the higher of the runs at the start and the end):")
    for name, value in ceiling.items():
        start, end = runs["start"][name]["gflops"], runs["end"][name]["gflops"]
        print(f"  {name:17s} {value:7.1f} (start {start:.1f}, end {end:.1f})")
    print(f"patch {sizes[0]}^3, batch {sizes[1]}, {sizes[2]} timed steps each (median)\n")
    columns = ["network", "variant", "params_m", "gflop_per_step", "seconds", "samples_per_s", "gflops"]
    print(format_table(rows, [*columns, "fraction_of_ceiling"]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and ratios, write the JSON.

    Args:
        argv: command-line arguments (default: ``sys.argv``).

    Returns:
        The result dict that was written.
    """
    args = _parser().parse_args(argv)
    if args.resunet is None:
        from pipeline.demo.run import DemoSettings

        args.resunet = dict(DemoSettings().denoiser)
    # BasicUNet pools four times and FlexibleUNet's ResNet-18 five: they need 32^3
    quick_patch = 32 if {"basicunet", "flexibleunet"} & set(args.networks) else 16
    patch, batch, steps = (quick_patch, 2, 1) if args.quick else (args.patch, args.batch, args.steps)
    conv_size = 8 if args.quick else 48
    torch.manual_seed(0)
    variants, note, emulated = _variants(args)
    ceilings = {name: key for key, name in CEILINGS.items() if key in {v[1:3] for v in variants}}
    reference = _reference_seconds(args.networks, variants, patch, batch, steps, conv_size, len(ceilings), args.quick)
    announce(
        "benchmarks.throughput",
        f"training steps of {', '.join(args.networks)} in {', '.join(v[0] for v in variants)} at {patch}^3 x {batch}"
        f" ({steps} timed steps each), between conv3d ceilings ({', '.join(ceilings)}) at the start and the end",
        expected_duration(reference["native"], reference["avx2"])
        + ("; far longer here: the bf16 variants are emulated" if emulated else ""),
        note,
    )
    progress = Progress(len(args.networks) * len(variants) + 2 * len(ceilings))
    runs = {"start": _ceilings(ceilings, conv_size, steps, "start", progress)}
    rows = _step_rows(args, variants, (patch, batch, steps), progress)
    runs["end"] = _ceilings(ceilings, conv_size, steps, "end", progress)
    ceiling = {k: max(runs["start"][k]["gflops"], runs["end"][k]["gflops"]) for k in runs["start"]}
    for row in rows:
        row["ceiling"] = CEILINGS[VARIANTS.get(row["variant"], (False, False, False))[:2]]
        row["fraction_of_ceiling"] = row["gflops"] / ceiling[row["ceiling"]]
        row["fraction_of_best_ceiling"] = row["gflops"] / max(ceiling.values())
    _print_tables(rows, ceiling, runs, (patch, batch, steps))
    ratios = _ratios(rows)
    for key, value in ratios.items():
        print(f"{key}: {value}")
    setup = {"patch": patch, "batch": batch, "steps": steps, "precision_note": note}
    setup.update(variants=[v[0] for v in variants], conv_input=[2, 32, conv_size, conv_size, conv_size])
    result = {"benchmark": "throughput", "quick": args.quick, "machine": machine_info(), "setup": setup}
    result.update(ceiling_gflops=ceiling, ceiling_runs=runs, rows=rows, ratios=ratios)
    write_json(result, args.out)
    print(f"wrote {args.out}")
    return result


def _ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Target check (step >= 0.6 of the ceiling) and the speed-up of each knob over fp32, per network."""
    out: dict[str, Any] = {}
    by = {(r["network"], r["variant"]): r for r in rows}
    for (net, variant), row in by.items():
        out[f"{net}: {variant} step / its conv3d ceiling (target >= 0.6)"] = round(row["fraction_of_ceiling"], 3)
        if variant != "fp32" and (net, "fp32") in by:
            out[f"{net}: {variant} speed-up over fp32"] = round(by[(net, "fp32")]["seconds"] / row["seconds"], 2)
    return out


if __name__ == "__main__":
    main()

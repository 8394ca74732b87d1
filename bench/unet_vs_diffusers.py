"""Speed of trilemma's U-Net against diffusers' ``UNet2DModel`` of the same architecture.

For each size (the ``small`` and ``base`` presets by default) diffusers' U-Net is built to the
preset's architecture (same widths, blocks per level, attention levels and heads, dropout,
sinusoidal time embedding, additive or scale-shift embedding), so the two have the same
parameter count, then both are timed on the same inputs, interleaved ours/theirs so that
background load hits both alike:

* training images/s: forward + MSE loss + backward + AdamW step (``--optimizer each``, the
  default: ours with the fused AdamW that trilemma trains with, diffusers with PyTorch's default
  AdamW as its training example builds it; ``--optimizer same``: PyTorch's default for both);
* sampling images/s: one forward under ``torch.no_grad()``. One network evaluation is one
  sampler step, so this is images·steps/s; a 50-step DDIM sample costs 50 of them;

each in fp32 and under ``torch.autocast(dtype=torch.bfloat16)``. Ours runs as shipped (it
switches its activations to channels-last itself on the CPU). Diffusers runs twice: as a user
would by default (NCHW), and with the user-visible switch ``.to(memory_format=torch.channels_last)``
on the model and the input (``diffusers_cl``). Every number is the median of
``--repeats`` timed runs after ``--warmup`` untimed ones, by the wall clock and by this
process's CPU time (the steadier one at ``--threads 1`` on a shared machine). Achieved GFLOP/s
(FLOPs of the architecture, counted by ``torch.utils.flop_counter.FlopCounterMode`` on diffusers'
network over one forward, and over one forward + backward for training; ours computes its
upsampling convolutions with fewer) are set against a large square matmul timed in the same run,
fp32 and bf16.

    python bench/unet_vs_diffusers.py                       # all cores, small and base
    python bench/unet_vs_diffusers.py --threads 1 --json out.json
    python bench/unet_vs_diffusers.py --device cuda --base-batch 64
    python bench/unet_vs_diffusers.py --threads 1 --sizes small --compile   # + torch.compile rows

``--compile`` adds both networks under ``torch.compile`` (``ours_compiled``: ``UNet.compile()`` in
place, as trilemma's training loop does under ``--compile``; ``diffusers_compiled``: plainly
``torch.compile(model)``), next to the eager ones, and times the training step only unless
``--modes`` says otherwise. Only the network is compiled (loss, backward driver and AdamW run
eagerly, as in the loop). Compilation (forward and backward graphs, per precision) happens in the
untimed warm-up, which is at least 3 runs for the compiled models.

Not a test: it asserts nothing except that the two networks' parameter counts agree within 10%.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from trilemma.nets import UNet, UNetConfig, count_parameters, kernels, preset
from trilemma.nets.layers import group_norm
from trilemma.utils.device import native_bf16

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


# --------------------------------------------------------------------------- the two networks

class DiffusersTwin(nn.Module):
    """diffusers' ``UNet2DModel`` built to ``config``'s architecture, called as ``model(x, t)``.

    Same widths, ResNet blocks per level, attention levels and head count, dropout, norm ε,
    [cos, sin] sinusoidal time embedding with a 2-layer MLP, and additive or scale-shift
    embedding. One difference diffusers cannot express: it takes a single GroupNorm group count,
    where ours picks one per width (``norm_groups`` says which); that changes no parameter count
    and next to no FLOPs.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        from diffusers import UNet2DModel

        c = config
        if c.num_classes or c.context_dim:
            raise ValueError("the diffusers twin covers unconditional U-Nets only")
        widths = tuple(c.base_channels * m for m in c.channel_mults)
        attn = [res in c.attn_resolutions for res in c.resolutions]
        # Our middle attention has the deepest width; diffusers takes a head *size*, shared by all layers.
        attn_widths = {w for w, a in zip(widths, attn) if a} | {widths[-1]}
        if len(attn_widths) != 1:
            raise ValueError(f"attention at several widths {sorted(attn_widths)}: no single head size fits")
        ours_groups = {w: group_norm(w).num_groups for w in sorted(set(widths))}
        groups = math.gcd(*ours_groups.values())                                  # divides every width
        self.norm_groups = {"ours": ours_groups, "diffusers": groups}
        self.net = UNet2DModel(
            sample_size=c.image_size, in_channels=c.in_channels, out_channels=c.out_channels or c.in_channels,
            block_out_channels=widths, layers_per_block=c.num_res_blocks,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
            attention_head_dim=attn_widths.pop() // c.num_heads,
            # attn_norm_num_groups: else diffusers drops the middle attention's GroupNorm under scale_shift.
            norm_num_groups=groups, attn_norm_num_groups=groups, norm_eps=1e-6, dropout=c.dropout,
            resnet_time_scale_shift="scale_shift" if getattr(c, "scale_shift", False) else "default",
            time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t, return_dict=False)[0]


class ChannelsLast(nn.Module):
    """A model run the way its user switches on channels-last: model converted once, input at each call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last), t)


def build_pair(name: str, image_size: int, in_channels: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    config = preset(name, image_size, in_channels)
    torch.manual_seed(0)
    ours = UNet(config).to(device)
    torch.manual_seed(0)
    theirs = DiffusersTwin(config).to(device)
    n_ours, n_theirs = count_parameters(ours), count_parameters(theirs)
    if abs(n_ours / n_theirs - 1) > 0.10:
        raise SystemExit(f"{name}: not the same size: ours {n_ours:,} parameters, diffusers {n_theirs:,}")
    return ours, theirs


def channels_last_twin(name: str, image_size: int, in_channels: int, device: torch.device) -> nn.Module:
    """diffusers' twin (same initial weights as build_pair's) with channels-last switched on."""
    torch.manual_seed(0)
    return ChannelsLast(DiffusersTwin(preset(name, image_size, in_channels)).to(device))


# --------------------------------------------------------------------------- timing

def synchronizer(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


CLOCKS = ("wall", "cpu")   # time.perf_counter, and time.process_time (this process's CPU seconds)


def seconds(fn: Callable[[], object], sync: Callable[[], None]) -> dict[str, float]:
    """Wall-clock and CPU seconds of one call. At one thread, CPU seconds leave out the time the
    OS gave the core to other processes, so they are the steadier measure on a shared machine."""
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync()
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def training_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, t: torch.Tensor,
                  eps: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> Callable[[], None]:
    """One DDPM step on fixed (x_t, t, ε): forward, ‖ε − ε̂‖² (in fp32), backward, AdamW."""
    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            eps_hat = model(x, t)                                                  # (B, C, H, W)
        F.mse_loss(eps_hat.float(), eps).backward()
        opt.step()
    return step


def sampling_step(model: nn.Module, x: torch.Tensor, t: torch.Tensor,
                  device: torch.device, dtype: torch.dtype | None) -> Callable[[], None]:
    """One network evaluation, i.e. one step of any sampler."""
    @torch.no_grad()
    def step():
        with autocast(device, dtype):
            model(x, t)
    return step


def race(steps: dict[str, Callable[[], None]], warmup: int, repeats: int,
         sync: Callable[[], None]) -> dict[str, dict[str, list[float]]]:
    """Time each step ``repeats`` times after ``warmup`` runs, alternating which goes first."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    sync()
    times = {name: {clock: [] for clock in CLOCKS} for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            for clock, sec in seconds(steps[name], sync).items():
                times[name][clock].append(sec)
    return times


def matmul_times(n: int, dtype: torch.dtype, device: torch.device, repeats: int,
                 sync: Callable[[], None]) -> dict[str, list[float]]:
    """Seconds of an n×n @ n×n matmul (2n³ FLOPs), ``repeats`` times, by each clock."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device, dtype) for _ in range(2))
    a @ b
    runs = [seconds(lambda: a @ b, sync) for _ in range(repeats)]
    return {clock: [run[clock] for run in runs] for clock in CLOCKS}


def flop_counter() -> FlopCounterMode:
    """FlopCounterMode that also counts the CPU flash-attention kernel (PyTorch counts only the GPU ones)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    cpu_sdpa = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        cpu_sdpa = {aten._scaled_dot_product_flash_attention_for_cpu:
                    lambda q, k, v, *_, **__: fc.sdpa_flop_count(q, k, v),
                    aten._scaled_dot_product_flash_attention_for_cpu_backward:
                    lambda grad_out, q, k, v, *_, **__: fc.sdpa_backward_flop_count(grad_out, q, k, v)}
    return FlopCounterMode(display=False, custom_mapping=cpu_sdpa)


# --------------------------------------------------------------------------- the benchmark

COMPILED = {"ours_compiled": "ours", "diffusers_compiled": "diffusers"}   # compiled model -> its eager twin
TWINS = {**COMPILED, "ours_default_adamw": "ours"}     # same network as another model: its FLOPs are not recounted


def compiled_pair(ours: nn.Module, theirs: nn.Module) -> dict[str, nn.Module]:
    """Copies (same initial weights) of both networks under torch.compile: ours the way
    trilemma's training loop compiles under ``--compile`` (``nn.Module.compile()``, in place),
    diffusers' the plain user way, ``torch.compile(model)``."""
    mine = copy.deepcopy(ours)
    mine.compile()
    return {"ours_compiled": mine, "diffusers_compiled": torch.compile(copy.deepcopy(theirs))}


def optimizer(key: str, model: nn.Module, choice: str, device: torch.device) -> torch.optim.AdamW:
    """AdamW at lr 1e-4. ``choice = "each"``: every network with the optimiser its library trains it
    with: ours fused on the CPU and CUDA (as ``trilemma.train.common.adamw``), diffusers' as its
    training example builds it (``torch.optim.AdamW`` with PyTorch's default implementation).
    ``"same"``: PyTorch's default AdamW for every network, so only the networks differ. ``"both"``:
    as ``each``, plus a copy of ours with the default AdamW (``ours_default_adamw``) in the race."""
    fused = (choice != "same" and key in ("ours", "ours_compiled") and device.type in ("cpu", "cuda"))
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)


def bench_size(name: str, args, device: torch.device, sync, log) -> dict:
    batch = args.base_batch if name == "base" else args.batch
    ours, theirs = build_pair(name, args.image_size, args.in_channels, device)
    models = {"ours": ours, "diffusers": theirs}
    if args.diffusers_channels_last:
        models["diffusers_cl"] = channels_last_twin(name, args.image_size, args.in_channels, device)
    n_params = {k: count_parameters(m) for k, m in models.items()}
    if args.optimizer == "both":
        models["ours_default_adamw"] = copy.deepcopy(ours)
    if args.compile:
        models.update(compiled_pair(ours, theirs))
    log(f"[{name}] parameters: ours {n_params['ours']:,}  diffusers {n_params['diffusers']:,}  "
        f"(ratio {n_params['ours'] / n_params['diffusers']:.3f}); GroupNorm groups by width: ours "
        f"{theirs.norm_groups['ours']}, diffusers {theirs.norm_groups['diffusers']}; batch {batch}")

    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, args.in_channels, args.image_size, args.image_size, generator=g).to(device)
    eps = torch.randn(x.shape, generator=g).to(device)
    t = torch.randint(1, 1001, (batch,), generator=g).to(device)
    opts = {k: optimizer(k, m, args.optimizer, device) for k, m in models.items()}

    # FLOPs of one forward (sampling) and of one forward + backward (training), counted in fp32.
    flops = {}
    for k, m in models.items():
        if k in TWINS:
            continue                                                       # same network as its twin
        m.eval()
        with flop_counter() as forward:
            sampling_step(m, x, t, device, None)()
        m.train()
        with flop_counter() as forward_backward:
            F.mse_loss(m(x, t), eps).backward()
        m.zero_grad(set_to_none=True)
        flops[k] = {"sample": forward.get_total_flops(), "train": forward_backward.get_total_flops()}
    for k, eager in TWINS.items():
        if k in models:
            flops[k] = flops[eager]
    log(f"[{name}] GFLOP per image, forward: ours {flops['ours']['sample'] / batch / 1e9:.3f}  "
        f"diffusers {flops['diffusers']['sample'] / batch / 1e9:.3f}; "
        f"forward+backward: ours {flops['ours']['train'] / batch / 1e9:.3f}  "
        f"diffusers {flops['diffusers']['train'] / batch / 1e9:.3f} (GFLOP/s below: diffusers' count for all)")

    rows = []
    for precision in args.precisions:
        dtype = PRECISIONS[precision]
        for mode in args.modes:
            for m in models.values():
                m.train(mode == "train")
            if mode == "train":
                steps = {k: training_step(m, opts[k], x, t, eps, device, dtype) for k, m in models.items()}
            else:
                steps = {k: sampling_step(m, x, t, device, dtype) for k, m in models.items()}
            start = time.perf_counter()
            if args.compile:                          # compile (forward + backward, this precision) untimed
                for _ in range(max(args.warmup, 3)):
                    for k in COMPILED:
                        steps[k]()
                sync()
                log(f"[{name} {precision} {mode}] compiled models warmed up ({time.perf_counter() - start:.0f} s)")
            times = race(steps, args.warmup, args.repeats, sync)
            row = {"size": name, "precision": precision, "mode": mode, "batch": batch, "times_s": times}
            for k in models:
                row[k] = {}
                for clock in CLOCKS:
                    median = statistics.median(times[k][clock])
                    # The architecture's FLOPs (diffusers' count) for every model, so that the
                    # GFLOP/s compare like the speeds do.
                    row[k][clock] = {"median_s": median, "images_per_s": batch / median,
                                     "gflops_per_s": flops["diffusers"][mode] / median / 1e9}
            row["ratio"] = {clock: row["ours"][clock]["images_per_s"] / row["diffusers"][clock]["images_per_s"]
                            for clock in CLOCKS}
            if "diffusers_cl" in models:
                row["ratio_cl"] = {clock: row["ours"][clock]["images_per_s"] /
                                   row["diffusers_cl"][clock]["images_per_s"] for clock in CLOCKS}
            if "ours_default_adamw" in models:
                row["ratio_fused_adamw"] = {clock: row["ours"][clock]["images_per_s"] /
                                            row["ours_default_adamw"][clock]["images_per_s"] for clock in CLOCKS}
            if args.compile:
                ips = {k: {clock: row[k][clock]["images_per_s"] for clock in CLOCKS} for k in models}
                for key, (a, b) in {"ratio_compiled": ("ours_compiled", "diffusers_compiled"),
                                    "ratio_compiled_vs_eager": ("ours_compiled", "diffusers"),
                                    "speedup_ours_compiled": ("ours_compiled", "ours"),
                                    "speedup_diffusers_compiled": ("diffusers_compiled", "diffusers")}.items():
                    row[key] = {clock: ips[a][clock] / ips[b][clock] for clock in CLOCKS}
            rows.append(row)
            wall = {k: row[k]["wall"]["images_per_s"] for k in models}
            cl = (f"  diffusers channels-last {wall['diffusers_cl']:7.1f} img/s, ours/that "
                  f"{row['ratio_cl']['wall']:.2f} (CPU time {row['ratio_cl']['cpu']:.2f})") if "ratio_cl" in row else ""
            log(f"[{name} {precision} {mode:6s}] ours {wall['ours']:7.1f} img/s  diffusers {wall['diffusers']:7.1f} "
                f"img/s  ours/diffusers {row['ratio']['wall']:.2f} (by CPU time {row['ratio']['cpu']:.2f}){cl}  "
                f"({time.perf_counter() - start:.0f} s)")
            if "ratio_fused_adamw" in row:
                log(f"[{name} {precision} {mode:6s}] ours with fused AdamW / ours with the default AdamW "
                    f"{row['ratio_fused_adamw']['wall']:.3f} (CPU time {row['ratio_fused_adamw']['cpu']:.3f})")
            if args.compile:
                log(f"[{name} {precision} {mode:6s}] compiled: ours {wall['ours_compiled']:7.1f} img/s  diffusers "
                    f"{wall['diffusers_compiled']:7.1f} img/s  ours-c/diffusers-c {row['ratio_compiled']['wall']:.2f} "
                    f"(CPU time {row['ratio_compiled']['cpu']:.2f})  ours-c/diffusers-eager "
                    f"{row['ratio_compiled_vs_eager']['wall']:.2f} (CPU time {row['ratio_compiled_vs_eager']['cpu']:.2f})")
    return {"size": name, "config": asdict(ours.config), "batch": batch, "parameters": n_params,
            "norm_groups": theirs.norm_groups, "flops": flops, "rows": rows}


def print_table(sizes: list[dict], matmul: dict[str, dict[str, float]], clock: str) -> None:
    print(f"\nBy {'wall-clock' if clock == 'wall' else 'CPU'} time (median of each timed run's seconds); "
          "matmul reference " + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in matmul[clock].items()))
    cl = any("diffusers_cl" in r for s in sizes for r in s["rows"])
    head = (f"{'size':5s} {'prec':4s} {'mode':6s} {'batch':>5s} | {'ours img/s':>10s} {'diff img/s':>10s} "
            f"{'ours/diff':>9s}" + (f" {'diffCL img/s':>12s} {'ours/diffCL':>11s}" if cl else "") +
            f" | {'ours GFLOP/s (%mm)':>18s} {'diff GFLOP/s (%mm)':>18s}")
    print(head)
    print("-" * len(head))
    for s in sizes:
        for r in s["rows"]:
            ref = matmul[clock][r["precision"]]
            ours, theirs = r["ours"][clock], r["diffusers"][clock]
            cells = [f"{m['gflops_per_s']:6.0f} ({m['gflops_per_s'] / ref:4.0%})" for m in (ours, theirs)]
            extra = (f" {r['diffusers_cl'][clock]['images_per_s']:12.1f} {r['ratio_cl'][clock]:11.2f}"
                     if "diffusers_cl" in r else "")
            print(f"{r['size']:5s} {r['precision']:4s} {r['mode']:6s} {r['batch']:5d} | "
                  f"{ours['images_per_s']:10.1f} {theirs['images_per_s']:10.1f} {r['ratio'][clock]:9.2f}{extra} | "
                  f"{cells[0]:>18s} {cells[1]:>18s}")


def print_compiled_table(sizes: list[dict], clock: str) -> None:
    rows = [r for s in sizes for r in s["rows"] if "ratio_compiled" in r]
    if not rows:
        return
    print(f"\ntorch.compile, by {'wall-clock' if clock == 'wall' else 'CPU'} time (img/s; -c: compiled)")
    head = (f"{'size':5s} {'prec':4s} {'mode':6s} {'batch':>5s} | {'ours':>7s} {'diff':>7s} {'ours-c':>7s} "
            f"{'diff-c':>7s} | {'ours-c/diff-c':>13s} {'ours-c/diff':>11s} {'ours/diff':>9s} | "
            f"{'ours-c/ours':>11s} {'diff-c/diff':>11s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        ips = [r[k][clock]["images_per_s"] for k in ("ours", "diffusers", "ours_compiled", "diffusers_compiled")]
        print(f"{r['size']:5s} {r['precision']:4s} {r['mode']:6s} {r['batch']:5d} | "
              + " ".join(f"{v:7.1f}" for v in ips) +
              f" | {r['ratio_compiled'][clock]:13.2f} {r['ratio_compiled_vs_eager'][clock]:11.2f} "
              f"{r['ratio'][clock]:9.2f} | {r['speedup_ours_compiled'][clock]:11.2f} "
              f"{r['speedup_diffusers_compiled'][clock]:11.2f}")


def print_summary(sizes: list[dict], matmul: dict[str, dict[str, float]], clocks: tuple[str, ...],
                  ddim_steps: int) -> None:
    print("\nParameters: " + "; ".join(f"{s['size']}: ours {s['parameters']['ours']:,}, "
                                       f"diffusers {s['parameters']['diffusers']:,}" for s in sizes))
    for clock in clocks:
        print_table(sizes, matmul, clock)
    for clock in clocks:
        print_compiled_table(sizes, clock)
    print("\n%mm: share of the same-precision matmul's GFLOP/s (the architecture's FLOPs, as counted on diffusers' "
          "network). diffCL: diffusers with .to(memory_format=torch.channels_last) on model and input.\n"
          "Training = forward + loss + backward + AdamW; GFLOP counted over forward + backward.\nSampling img/s = network evaluations per second, one per image "
          f"per sampler step; a {ddim_steps}-step DDIM sample (wall clock):")
    for s in sizes:
        for r in s["rows"]:
            if r["mode"] == "sample":
                per = {k: r[k]["wall"]["images_per_s"] / ddim_steps for k in ("ours", "diffusers")}
                print(f"  {r['size']:5s} {r['precision']}: ours {per['ours']:.2f} images/s "
                      f"({r['batch'] / per['ours']:.0f} s per batch of {r['batch']}), "
                      f"diffusers {per['diffusers']:.2f} images/s")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["small", "base"], choices=["tiny", "small", "base"])
    p.add_argument("--precisions", nargs="+", default=None, choices=list(PRECISIONS),
                   help="default: fp32, and bf16 where the device has it natively (a CUDA GPU from Ampere on, "
                        "a CPU with AVX512-BF16 or AMX)")
    p.add_argument("--emulated-bf16", action="store_true",
                   help="allow --precisions bf16 on a device without native bf16 (emulated: on an AVX2 CPU a "
                        "2048² bf16 matmul took over 10 minutes; trilemma refuses --bf16 there)")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, …")
    p.add_argument("--threads", type=int, default=cores, help=f"torch CPU threads (default: all {cores} cores)")
    p.add_argument("--batch", type=int, default=64, help="batch size for every size but base")
    p.add_argument("--base-batch", type=int, default=None,
                   help="batch size for base (default: 16 on CPU, where 64 takes ~30 s a training step; "
                        "--batch elsewhere)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--ddim-steps", type=int, default=50, help="sampler length for the images/s translation")
    p.add_argument("--no-diffusers-channels-last", dest="diffusers_channels_last", action="store_false",
                   help="leave out the extra diffusers run with channels-last switched on")
    p.add_argument("--compile", action="store_true",
                   help="also time both networks under torch.compile (ours as trilemma's loop compiles it)")
    p.add_argument("--modes", nargs="+", default=None, choices=["train", "sample"],
                   help="steps to time (default: train and sample; train only with --compile)")
    p.add_argument("--optimizer", choices=["each", "same", "both"], default="each",
                   help="each: every network with its library's AdamW (ours fused, diffusers PyTorch's default); "
                        "same: PyTorch's default AdamW for both, so that only the networks differ; both: each, "
                        "plus ours with the default AdamW in the same race")
    p.add_argument("--json", default=None, help="write all results (with every timed run) to this file")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    if args.modes is None:
        args.modes = ["train"] if args.compile else ["train", "sample"]

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else torch.device(args.device)
    if args.base_batch is None:
        args.base_batch = 16 if device.type == "cpu" else args.batch
    native = native_bf16(device)
    if args.precisions is None:
        args.precisions = ["fp32", "bf16"] if native else ["fp32"]
    elif "bf16" in args.precisions and not native and not args.emulated_bf16:
        p.error(f"--precisions bf16: {device} has no native bf16 (emulated, it is slower than fp32 by orders of "
                f"magnitude, and trilemma refuses --bf16 here); leave it out, or add --emulated-bf16 to time it")
    torch.set_num_threads(args.threads)
    sync = synchronizer(device)
    began = time.perf_counter()

    def log(msg: str) -> None:
        print(f"{time.perf_counter() - began:6.0f}s  {msg}", flush=True)

    import diffusers
    machine = {"device": str(device),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
               "threads": torch.get_num_threads(), "cores": cores, "torch": torch.__version__,
               "diffusers": diffusers.__version__, "python": platform.python_version(),
               "load_average_start": os.getloadavg(),
               "trilemma_cpu_kernels": device.type == "cpu" and kernels.available(), "optimizer": args.optimizer}
    log(f"{machine['device_name']} ({device}), {machine['threads']} threads of {cores} cores; "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}; "
        f"load average {machine['load_average_start'][0]:.2f}; "
        f"trilemma's fused CPU kernels {'on' if machine['trilemma_cpu_kernels'] else 'off'}")

    flop = 2 * args.matmul_size**3
    mm_times = {prec: {clock: [] for clock in CLOCKS} for prec in args.precisions}

    def reference(when: str) -> None:
        for prec in args.precisions:
            times = matmul_times(args.matmul_size, PRECISIONS[prec] or torch.float32, device,
                                 max(args.repeats, 5), sync)
            for clock in CLOCKS:
                mm_times[prec][clock] += times[clock]
            log(f"[matmul {when}] {args.matmul_size}×{args.matmul_size} {prec}: "
                f"{flop / statistics.median(times['wall']) / 1e9:.0f} GFLOP/s")

    reference("start")
    sizes = [bench_size(name, args, device, sync, log) for name in args.sizes]
    reference("end")
    # One reference per precision and clock: the median over the runs at the start and at the end.
    matmul = {clock: {prec: flop / statistics.median(mm_times[prec][clock]) / 1e9 for prec in args.precisions}
              for clock in CLOCKS}
    machine["load_average_end"] = os.getloadavg()
    log(f"done; load average {machine['load_average_end'][0]:.2f}")

    # CPU seconds mean nothing on a GPU, where the host only waits.
    print_summary(sizes, matmul, CLOCKS if device.type == "cpu" else ("wall",), args.ddim_steps)
    results = {"machine": machine, "args": vars(args),
               "matmul": {"size": args.matmul_size, "gflops_per_s": matmul, "times_s": mm_times},
               "sizes": sizes}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()

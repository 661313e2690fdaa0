"""Training-step speed and peak memory of our UNet against MONAI's DiffusionModelUNet.

For each preset, both networks get the same widths, res blocks, attention levels, head size, group
count and input/output channels (MONAI also gets the class embedding; ours keeps the preset's full
conditioning: class, z, prior), and one training step = forward + Lp loss + backward + AdamW step.
Speed: both models live in one process and their steps alternate (ours, MONAI, ours, ...), so that
the load of a shared machine hits both alike; the median step counts. Memory: each model runs a step
in a fresh subprocess, so that its peak is its own: on CPU the max-RSS increase over the step, on CUDA
torch.cuda.max_memory_allocated over the step.

    .venv/bin/python benchmarks/train_bench.py demo_cpu demo_cpu,data.image_size=64,model.attention_resolutions=[16]
    .venv/bin/python benchmarks/train_bench.py res96 res128 res160 --device cuda --precision bf16 --batch 64

Compute: the FLOPs of one training step (forward + backward, counted once by torch's FlopCounterMode:
convolutions, matrix products and attention; the optimizer's elementwise work is not counted) divided
by the median step time give the achieved TFLOP/s, printed beside the machine's measured peak (a large
square matrix product in the same dtype: bf16 on CUDA, fp32 on CPU) and their ratio.
On CUDA, peak memory is measured in the timing process (max_memory_allocated over two steps per model:
allocated bytes do not depend on what else the process holds); `--no-memory` skips it on CPU.

A preset is a name or YAML path, optionally followed by ",key=value" overrides. MONAI is not a
dependency: without it the table has our numbers only; `--install-monai` runs
`pip install --no-deps monai einops` into this interpreter (it never pulls another torch).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time


def monai_available() -> bool:
    """MONAI importable and able to build an attention UNet (which needs its optional einops)."""
    try:
        from monai.networks.nets import DiffusionModelUNet

        DiffusionModelUNet(spatial_dims=2, in_channels=1, out_channels=1, num_res_blocks=1, channels=(8, 8),
                           attention_levels=(False, True), norm_num_groups=8, num_head_channels=8)
    except Exception:
        return False
    return True


def install_monai() -> bool:
    import torch

    before = torch.__version__
    print("installing MONAI and einops without dependencies: pip install --no-deps monai einops", flush=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "monai", "einops"], check=False)
    if done.returncode != 0:
        return False
    after = subprocess.run([sys.executable, "-c", "import torch, monai; print(torch.__version__)"],
                           capture_output=True, text=True, check=False)
    if after.returncode != 0 or after.stdout.strip() != before:
        print(f"MONAI installed but does not import beside torch {before}: {after.stderr.strip()[-300:]}")
        return False
    return monai_available()


def load_preset(spec: str):
    from jsddpm.config import load_config

    # split at commas that start a `key=`, so that list values such as [1,2,4] stay whole
    name, *overrides = re.split(r",(?=[A-Za-z_][\w.]*=)", spec)
    return load_config(name, overrides)


def build_monai(cfg):
    from monai.networks.nets import DiffusionModelUNet

    from jsddpm.model import data_channels

    m = cfg.model
    size = int(cfg.data.image_size)
    channels = [m.base_channels * k for k in m.channel_mult]
    attention = [size // 2**i in set(m.attention_resolutions) for i in range(len(channels))]
    self_cond = cfg.diffusion.self_conditioning_prob > 0
    in_ch = data_channels(cfg) * (2 if self_cond else 1) + (1 if m.prior == "concat" else 0)
    return DiffusionModelUNet(
        spatial_dims=2, in_channels=in_ch, out_channels=data_channels(cfg), num_res_blocks=m.num_res_blocks,
        channels=channels, attention_levels=attention, norm_num_groups=m.norm_groups,
        num_head_channels=m.attention_head_dim, num_class_embeds=m.num_classes or None,
    )


def current_rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Bench:
    """One model's training step on fixed random inputs (fixed shapes, as in training)."""

    def __init__(self, cfg, which: str, batch: int, device: str, precision: str):
        import torch

        from jsddpm.model import build_model, count_parameters, data_channels

        torch.manual_seed(0)
        size = int(cfg.data.image_size)
        self.cfg, self.which, self.device = cfg, which, device
        self.net = (build_model(cfg, verbose=False) if which == "ours" else build_monai(cfg)).to(device)
        if which == "monai" and device == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)  # its best layout on a GPU
        self.params = count_parameters(self.net)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-4)
        self.x0 = torch.randn(batch, data_channels(cfg), size, size, device=device)
        self.t = torch.randint(0, 1000, (batch,), device=device)
        self.label = torch.randint(0, max(cfg.model.num_classes, 1), (batch,), device=device)
        self.z = torch.rand(batch, device=device)
        self.prior = torch.rand(batch, 1, size, size, device=device)
        self.drop = torch.rand(batch, device=device) < 0.1
        self.self_cond = torch.zeros_like(self.x0) if cfg.diffusion.self_conditioning_prob > 0 else None
        self.autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")

    def forward(self):
        import torch

        if self.which == "ours":
            return self.net(self.x0, self.t, label=self.label, z=self.z, prior=self.prior, self_cond=self.self_cond,
                            drop_cond=self.drop)
        parts = [self.x0] + ([self.self_cond] if self.self_cond is not None else [])
        parts += [self.prior] if self.cfg.model.prior == "concat" else []
        kwargs = {"class_labels": self.label} if self.cfg.model.num_classes else {}
        return self.net(torch.cat(parts, 1), self.t, **kwargs)

    def step_flops(self) -> int:
        """FLOPs of one training step's forward and backward (one untimed step)."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.step()
        return int(counter.get_total_flops())

    def cuda_peak_mib(self) -> float:
        """Peak allocated memory over two steps (the second holds the optimizer state too)."""
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for _ in range(2):
            self.step()
        return (torch.cuda.max_memory_allocated() - before) / 2**20

    def step(self) -> float:
        """Seconds for one training step."""
        import torch

        start = time.perf_counter()
        with self.autocast:
            out = self.forward()
        loss = (out.float() - self.x0).abs().pow(1.5).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def time_worker(spec: str, models: list[str], args) -> dict:
    """Alternate the models' steps in this process; images/s from each one's median step."""
    cfg = load_preset(spec)
    benches = {which: Bench(cfg, which, args.batch, args.device, args.precision) for which in models}
    flops = {which: bench.step_flops() for which, bench in benches.items()}
    peak = {which: bench.cuda_peak_mib() for which, bench in benches.items()} if args.device == "cuda" else {}
    for _ in range(args.warmup):
        for bench in benches.values():
            bench.step()
    times: dict[str, list[float]] = {which: [] for which in benches}
    for _ in range(args.steps):
        for which, bench in benches.items():
            times[which].append(bench.step())
    out = {}
    for which, ts in times.items():
        median = sorted(ts)[len(ts) // 2]
        out[which] = {"images_per_s": args.batch / median, "best_images_per_s": args.batch / min(ts),
                      "params": benches[which].params, "step_flops": flops[which],
                      "tflops": flops[which] / median / 1e12}
        if which in peak:
            out[which]["peak_mib"] = peak[which]
    return out


def matmul_peak_tflops(device: str, precision: str) -> float:
    """The device's measured matrix-product rate: bf16 (CUDA) or fp32 (CPU), mean of 10 after 3 warm-ups."""
    import torch

    n = 8192 if device == "cuda" else 1024
    dtype = torch.bfloat16 if precision == "bf16" and device == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * 10 / (time.perf_counter() - start) / 1e12


def memory_worker(spec: str, which: str, args) -> dict:
    """Peak memory (MiB) of a training step of one model, in this fresh process."""
    import torch

    bench = Bench(load_preset(spec), which, args.batch, args.device, args.precision)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for _ in range(2):  # the second step holds the optimizer state too
            bench.step()
        return {which: (torch.cuda.max_memory_allocated() - before) / 2**20}
    before = current_rss_kib()
    for _ in range(2):
        bench.step()
    return {which: (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}


def run_worker(args, mode: str, spec: str, models: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--models", ",".join(models), spec,
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--device", args.device, "--precision", args.precision, "--threads", str(args.threads)]
    cmd_timeout = args.worker_timeout
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=cmd_timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{mode} of {','.join(models)} on {spec} ran past {cmd_timeout} s") from None
    if done.returncode != 0:
        raise RuntimeError(f"{mode} of {','.join(models)} on {spec} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(args, spec: str, models: list[str]) -> dict:
    speed = run_worker(args, "time", spec, models)
    for which in models:
        if "peak_mib" not in speed[which]:  # CPU: each model's RSS in a fresh process
            speed[which]["peak_mib"] = run_worker(args, "memory", spec, [which])[which] if args.memory else None
    return speed


def fmt(value, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*",
                        default=["demo_cpu", "demo_cpu,data.image_size=64,model.attention_resolutions=[16]", "res96"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model (the median counts)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (0 = torch's default); 1 is steadier on a busy machine")
    parser.add_argument("--install-monai", action="store_true", help="pip install --no-deps monai einops if missing")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the CPU peak-memory subprocesses (on CUDA memory is measured in-process anyway)")
    parser.add_argument("--worker-timeout", type=float, default=None,
                        help="seconds before a preset's measuring process is stopped and the preset reported failed")
    parser.add_argument("--worker", choices=["time", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--models", default="ours", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        models = args.models.split(",")
        spec = args.presets[0]
        result = time_worker(spec, models, args) if args.worker == "time" else memory_worker(spec, models[0], args)
        print(json.dumps(result))
        return

    have_monai = monai_available() or (args.install_monai and install_monai())
    if not have_monai:
        print("MONAI is NOT installed: measuring our UNet only (rerun with --install-monai, or "
              "`pip install --no-deps monai einops`, for the comparison)")
    import torch

    threads = args.threads or torch.get_num_threads()
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{threads} CPU threads"
    peak = matmul_peak_tflops(args.device, args.precision)
    print(f"torch {torch.__version__}, {where}, {args.precision}, batch {args.batch}, median of {args.steps} "
          f"alternating steps (ratio; 'best': ratio of the fastest steps); measured matmul peak {peak:.3g} TFLOP/s "
          f"({'bf16' if args.device == 'cuda' and args.precision == 'bf16' else 'fp32'})")
    print(f"{'preset':<32} {'ours img/s':>10} {'MONAI img/s':>11} {'ratio':>6} {'best':>5} {'ours TFLOP/s':>12} "
          f"{'MONAI TFLOP/s':>13} {'ours %peak':>10} {'GFLOP/img':>9} {'ours params':>12} {'MONAI params':>12} "
          f"{'ours MiB':>9} {'MONAI MiB':>9}", flush=True)
    for spec in args.presets:
        try:
            res = measure(args, spec, ["ours", "monai"] if have_monai else ["ours"])
        except RuntimeError as exc:
            print(f"{spec:<32} failed: {str(exc).strip().splitlines()[-1]}", flush=True)
            continue
        ours, monai = res["ours"], res.get("monai") or {}
        ratio = ours["images_per_s"] / monai["images_per_s"] if monai else None
        best = ours["best_images_per_s"] / monai["best_images_per_s"] if monai else None
        print(f"{spec:<32} {ours['images_per_s']:>10.1f} {fmt(monai.get('images_per_s'), '.1f', 11)} "
              f"{fmt(ratio, '.2f', 6)} {fmt(best, '.2f', 5)} {ours['tflops']:>12.3g} "
              f"{fmt(monai.get('tflops'), '.3g', 13)} "
              f"{100 * ours['tflops'] / peak:>9.1f}% {ours['step_flops'] / args.batch / 1e9:>9.2f} "
              f"{ours['params']:>12,} {fmt(monai.get('params'), ',', 12)} {fmt(ours.get('peak_mib'), '.0f', 9)} "
              f"{fmt(monai.get('peak_mib'), '.0f', 9)}", flush=True)


if __name__ == "__main__":
    main()

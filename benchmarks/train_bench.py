"""Training-step speed and peak memory of our UNet against MONAI's DiffusionModelUNet.

For each preset, both networks get the same widths, res blocks, attention levels, head size, group
count and input/output channels (MONAI also gets the class embedding; ours keeps the preset's full
conditioning: class, z, prior), and one training step = forward + Lp loss + backward + AdamW step.
Speed: both models live in one process and their steps alternate (ours, MONAI, ours, ...), so that
the load of a shared machine hits both alike; the median step counts. Memory: each model runs a step
in a fresh subprocess, so that its peak is its own: on CPU the max-RSS increase over the step, on CUDA
torch.cuda.max_memory_allocated over the step.

    .venv/bin/python benchmarks/train_bench.py demo_cpu demo_cpu,data.image_size=64,model.attention_resolutions=[16]
    .venv/bin/python benchmarks/train_bench.py res128 --device cuda --precision bf16

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
    for _ in range(args.warmup):
        for bench in benches.values():
            bench.step()
    times: dict[str, list[float]] = {which: [] for which in benches}
    for _ in range(args.steps):
        for which, bench in benches.items():
            times[which].append(bench.step())
    return {which: {"images_per_s": args.batch / sorted(ts)[len(ts) // 2], "best_images_per_s": args.batch / min(ts),
                    "params": benches[which].params}
            for which, ts in times.items()}


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
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} of {','.join(models)} on {spec} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(args, spec: str, models: list[str]) -> dict:
    speed = run_worker(args, "time", spec, models)
    for which in models:
        speed[which]["peak_mib"] = run_worker(args, "memory", spec, [which])[which]
    return speed


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
    print(f"torch {torch.__version__}, device {args.device}, {args.precision}, batch {args.batch}, "
          f"{threads} threads, median of {args.steps} alternating steps (ratio; 'best': ratio of the fastest steps)")
    print(f"{'preset':<40} {'ours img/s':>10} {'MONAI img/s':>11} {'ratio':>6} {'best':>5} {'ours params':>12} "
          f"{'MONAI params':>12} {'ours MiB':>9} {'MONAI MiB':>9}", flush=True)
    for spec in args.presets:
        try:
            res = measure(args, spec, ["ours", "monai"] if have_monai else ["ours"])
        except RuntimeError as exc:
            print(f"{spec:<40} failed: {str(exc).strip().splitlines()[-1]}", flush=True)
            continue
        ours, monai = res["ours"], res.get("monai")
        if monai:
            print(f"{spec:<40} {ours['images_per_s']:>10.1f} {monai['images_per_s']:>11.1f} "
                  f"{ours['images_per_s'] / monai['images_per_s']:>6.2f} "
                  f"{ours['best_images_per_s'] / monai['best_images_per_s']:>5.2f} {ours['params']:>12,} "
                  f"{monai['params']:>12,} {ours['peak_mib']:>9.0f} {monai['peak_mib']:>9.0f}", flush=True)
        else:
            print(f"{spec:<40} {ours['images_per_s']:>10.1f} {'-':>11} {'-':>6} {'-':>5} {ours['params']:>12,} "
                  f"{'-':>12} {ours['peak_mib']:>9.0f} {'-':>9}", flush=True)


if __name__ == "__main__":
    main()

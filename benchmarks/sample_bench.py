"""Sampling speed: samples/s per sampler and step count, through `jsddpm.diffusion.sample`.

The network is `jsddpm.model.build_model` on a preset (default `demo_cpu`) with random weights and
random class / z / prior conditions, one generator per sample (as in `jsddpm generate`), DDIM with
eta = 0; when the model package does not import, a small conv-net stand-in
is timed instead (the table header says which). Every sampler costs one network call per step (two
batched into one with --guidance != 1), so the samplers should differ only by their update arithmetic.
The last columns time inpainting (`jsddpm.diffusion.inpaint.sample_known`, RePaint with --resample
re-noising jumps per step, the image's right half known): (1 + resample) network calls per step.

    .venv/bin/python benchmarks/sample_bench.py
    .venv/bin/python benchmarks/sample_bench.py --preset res128 --device cuda --batch 64 --steps 25 50 250
"""

from __future__ import annotations

import argparse
import time

import torch


class StandInDenoiser(torch.nn.Module):
    """Three 3x3 convolutions: only used when jsddpm.model does not import."""

    def __init__(self, channels: int, width: int = 32):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(channels, width, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(width, channels, 3, padding=1),
        )

    def forward(self, x_t, t, **_):
        return self.net(x_t)


def build_denoiser(preset: str, batch: int, device: str):
    """(denoiser, sample shape, schedule, prediction type, description)."""
    from jsddpm.config import load_config
    from jsddpm.diffusion import ConditionedDenoiser, NoiseSchedule

    cfg = load_config(preset)
    size = int(cfg.data.image_size)
    channels = int(cfg.model.image_channels) + (1 if cfg.model.joint_mask else 0)
    schedule = NoiseSchedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)
    g = torch.Generator().manual_seed(0)
    try:
        from jsddpm.model import build_model

        net = build_model(cfg, verbose=False).to(device).eval()
        n_params = sum(p.numel() for p in net.parameters())
        conditions = {
            "label": torch.randint(0, max(int(cfg.model.num_classes), 1), (batch,), generator=g).to(device),
            "z": torch.rand(batch, generator=g).to(device),
            "prior": torch.rand(batch, 1, size, size, generator=g).to(device),
        }
        if int(cfg.model.num_classes) == 0:
            conditions.pop("label")
        if not cfg.model.z_conditioning:
            conditions.pop("z")
        if cfg.model.prior == "none":
            conditions.pop("prior")
        what = f"jsddpm UNet from preset {preset} ({n_params / 1e6:.2f}M params)"
        denoiser = ConditionedDenoiser(net, **conditions)
    except ImportError as exc:
        net = StandInDenoiser(channels).to(device).eval()
        what = f"conv-net STAND-IN (jsddpm.model does not import: {exc})"
        denoiser = ConditionedDenoiser(net)
    return denoiser, (batch, channels, size, size), schedule, cfg.diffusion.prediction_type, what


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo_cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    ap.add_argument("--samplers", nargs="+", default=["ddpm", "ddim", "dpmpp_2m"])
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1, help="best of this many timed runs")
    ap.add_argument("--resample", type=int, default=2, help="inpainting: re-noising jumps per step (inpaint.resample)")
    args = ap.parse_args()

    from jsddpm.diffusion import sample
    from jsddpm.diffusion.inpaint import sample_known

    denoiser, shape, schedule, ptype, what = build_denoiser(args.preset, args.batch, args.device)
    print(f"# sampling speed: {what}; batch {shape[0]}, {shape[1]}x{shape[2]}x{shape[3]}, {ptype} prediction, "
          f"guidance {args.guidance}, device {args.device}, torch threads {torch.get_num_threads()}")

    source = torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    keep = torch.zeros(shape, dtype=torch.bool)
    keep[..., shape[-1] // 2:] = True

    def run(sampler: str, steps: int, inpaint: bool = False) -> float:
        gens = [torch.Generator().manual_seed(i) for i in range(shape[0])]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        settings = dict(prediction_type=ptype, sampler=sampler, steps=steps, eta=0.0, generator=gens,
                        guidance_scale=args.guidance, device=args.device)
        if inpaint:
            sample_known(denoiser, source, schedule, keep=keep, resample=args.resample, **settings)
        else:
            sample(denoiser, shape, schedule, **settings)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(args.samplers[0], 2)  # warm-up
    inp = f"inpaint r={args.resample}"
    print(f"| {'sampler':<9} | {'steps':>5} | {'seconds':>8} | {'ms/step':>8} | {'samples/s':>9} "
          f"| {inp + ' s':>13} | {inp + ' samples/s':>21} |")
    print(f"|{'-' * 11}|{'-' * 7}|{'-' * 10}|{'-' * 10}|{'-' * 11}|{'-' * 15}|{'-' * 23}|")
    for steps in args.steps:
        for sampler in args.samplers:
            seconds = min(run(sampler, steps) for _ in range(args.repeats))
            inpaint_seconds = min(run(sampler, steps, inpaint=True) for _ in range(args.repeats))
            print(f"| {sampler:<9} | {steps:>5} | {seconds:>8.2f} | {1e3 * seconds / steps:>8.1f} "
                  f"| {shape[0] / seconds:>9.2f} | {inpaint_seconds:>13.2f} | {shape[0] / inpaint_seconds:>21.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()

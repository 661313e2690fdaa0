"""How well inpainting couples the generated part to the known part: the issue-20 Gaussian, with the exact
denoiser, for each (sampler, steps, resample).

x0 = (k, u) ~ N(0, 0.5^2 [[1, 0.9], [0.9, 1]]); k is known, u generated (RePaint, `sample_known`). The
exact conditional has slope E[u | k] / k = 0.90 and residual std sqrt(1 - 0.9^2) = 0.436 (x 0.5). Printed:
the regression slope of u on k, the residual std over its exact value, network calls per result and wall
seconds; then the mask-conditioned alternative (k given to the network as a condition: exact by design).

    .venv/bin/python benchmarks/inpaint_coupling_bench.py [--n 20000] [--grid ddpm:100:9 dpmpp_2m:30:2 ...]
"""

from __future__ import annotations

import argparse
import time

import torch

from jsddpm.diffusion import NoiseSchedule, sample
from jsddpm.diffusion.analytic import GaussianDenoiser
from jsddpm.diffusion.inpaint import sample_known

STD, RHO = 0.5, 0.9
COV = [[STD**2, RHO * STD**2], [RHO * STD**2, STD**2]]
GRID = ["dpmpp_2m:30:0", "dpmpp_2m:30:2", "dpmpp_2m:30:4", "dpmpp_2m:30:9", "dpmpp_2m:50:4",
        "ddim:50:2", "ddim:50:4", "ddim:100:4",
        "ddpm:50:2", "ddpm:50:4", "ddpm:50:9", "ddpm:100:2", "ddpm:100:4", "ddpm:100:6", "ddpm:100:9",
        "ddpm:250:2", "ddpm:250:4", "ddpm:250:9"]


def coupling(x: torch.Tensor) -> tuple[float, float]:
    """(slope of u on k, residual std / exact residual std)."""
    k, u = x[:, 0].double(), x[:, 1].double()
    slope = (((k - k.mean()) * (u - u.mean())).mean() / k.var()).item()
    resid = (u - u.mean() - slope * (k - k.mean())).std().item()
    return slope, resid / (STD * (1 - RHO**2) ** 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--grid", nargs="*", default=GRID, help="sampler:steps:resample")
    args = parser.parse_args()
    torch.set_num_threads(1)
    schedule = NoiseSchedule("cosine", 1000)
    denoiser = GaussianDenoiser([0.0, 0.0], COV, schedule)
    chol = torch.linalg.cholesky(torch.tensor(COV, dtype=torch.float64))
    source = (torch.randn(args.n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) @ chol.T).float()
    keep = torch.tensor([True, False])
    print(f"exact conditional: slope {RHO:.3f}, residual std ratio 1.000   (n = {args.n})")
    print("| sampler | steps | resample | calls / result | slope | residual std / exact | s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for item in args.grid:
        sampler, steps, resample = item.split(":")
        start = time.perf_counter()
        x = sample_known(denoiser, source, schedule, keep=keep, resample=int(resample), prediction_type="sample",
                         sampler=sampler, steps=int(steps), generator=torch.Generator().manual_seed(1), clip_x0=False)
        slope, resid = coupling(x)
        print(f"| {sampler} | {steps} | {resample} | {int(steps) * (int(resample) + 1)} | {slope:.3f} | {resid:.3f} "
              f"| {time.perf_counter() - start:.1f} |", flush=True)
    # the known coordinate given to the network as its condition (what model.mask_conditioning does for the mask)
    conditioned = lambda x_in, t: denoiser(x_in, t, keep, source)  # noqa: E731
    for sampler, steps in (("dpmpp_2m", 30), ("ddpm", 100)):
        start = time.perf_counter()
        x = sample(conditioned, source.shape, schedule, prediction_type="sample", sampler=sampler, steps=steps,
                   generator=torch.Generator().manual_seed(1), clip_x0=False)
        x[:, 0] = source[:, 0]
        slope, resid = coupling(x)
        print(f"| {sampler}, k as condition | {steps} | 0 | {steps} | {slope:.3f} | {resid:.3f} "
              f"| {time.perf_counter() - start:.1f} |", flush=True)


if __name__ == "__main__":
    main()

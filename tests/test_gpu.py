"""The CUDA code paths: bf16-mixed steps of every preset, exact resume, batch-size-independent generation,
the UNet's channels-last layout under bf16, and precision exactly as configured.

Marked `gpu` and skipped without CUDA (`pytest -m gpu` on a GPU machine; benchmarks/gpu_check.sh runs
them there). With JSDDPM_GPU_TESTS_ON_CPU=1 they run on the CPU instead, on the demo preset only
(bf16 autocast exists on CPU too), so that `gpu_check.sh --dry-run` proves the tests themselves run.
"""

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from jsddpm.checkpoint import Checkpoint
from jsddpm.cli import main
from jsddpm.config import PRESET_DIR, load_config

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, read when CUDA starts
ON_CPU = os.environ.get("JSDDPM_GPU_TESTS_ON_CPU") == "1" and not torch.cuda.is_available()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not (torch.cuda.is_available() or ON_CPU), reason="needs CUDA"),
              pytest.mark.usefixtures("one_thread")]

PRESETS = ["demo_cpu"] if ON_CPU else sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
# bf16 keeps 8 mantissa bits (~0.4% per rounding): a loss and its gradient direction agree with fp32
# to a few percent; a broken cast (fp16 overflow, a layer left in bf16 for the loss) is far off that
BF16_LOSS_RTOL, BF16_GRAD_COSINE = 0.05, 0.97


def random_batch(cfg, n: int, device: str) -> dict:
    from jsddpm.model import data_channels

    g = torch.Generator().manual_seed(1)
    size = int(cfg.data.image_size)
    x = torch.rand(n, data_channels(cfg), size, size, generator=g) * 2 - 1
    if cfg.model.joint_mask:
        x[:, -1] = torch.where(x[:, -1] > 0.8, 1.0, -1.0)
    batch = {"x": x, "label": torch.randint(0, max(int(cfg.model.num_classes), 1), (n,), generator=g),
             "zbin": torch.randint(0, int(cfg.data.n_zbins), (n,), generator=g), "z": torch.rand(n, generator=g),
             "prior": torch.rand(n, 1, size, size, generator=g)}
    return {k: v.to(device) for k, v in batch.items()}


def loss_and_grads(module, batch: dict, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One training_step (as Lightning's bf16-mixed runs it: under autocast, fp32 weights) and backward."""
    module.zero_grad(set_to_none=True)
    with torch.autocast(device_type=DEVICE, dtype=torch.bfloat16, enabled=bf16):
        loss = module.training_step(batch, 0)
    loss.backward()
    grads = torch.cat([p.grad.flatten().float() for p in module.parameters() if p.grad is not None])
    return loss.detach().float(), grads


@pytest.mark.parametrize("preset", PRESETS)
def test_bf16_mixed_step_is_finite_and_close_to_fp32(preset):
    from jsddpm.training.module import DiffusionModule

    cfg = load_config(preset, ["train.precision=32"])
    torch.manual_seed(0)
    module = DiffusionModule(cfg).to(DEVICE).train()
    with torch.no_grad():  # the zero-initialised output layer would leave every inner gradient at 0
        for p in module.net.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0.0, 0.02)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    module.log = module.log_dict = lambda *args, **kwargs: None  # no Trainer here
    module.optimizers = lambda: optimizer
    batch = random_batch(cfg, 4, DEVICE)
    loss32, grad32 = loss_and_grads(module, batch, bf16=False)
    loss16, grad16 = loss_and_grads(module, batch, bf16=True)
    assert torch.isfinite(loss16) and torch.isfinite(grad16).all()
    assert abs(loss16 - loss32) <= BF16_LOSS_RTOL * abs(loss32), (preset, float(loss16), float(loss32))
    cosine = torch.nn.functional.cosine_similarity(grad16, grad32, dim=0)
    assert cosine > BF16_GRAD_COSINE, (preset, float(cosine))
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert all(p.dtype == torch.float32 for p in module.parameters())  # mixed: the weights stay fp32


class RecordPrecision:
    """Output dtype of the network and torch's fp32 matmul precision during each training batch."""

    def __new__(cls):
        import lightning as L

        class _Record(L.Callback):
            def __init__(self):
                self.out_dtypes, self.matmul, self.precision = set(), set(), None

            def on_train_start(self, trainer, module):
                self.precision = trainer.precision
                module.net.register_forward_hook(lambda m, i, out: self.out_dtypes.add(out.dtype))

            def on_train_batch_end(self, trainer, *args):
                self.matmul.add(torch.get_float32_matmul_precision())

        return _Record()


def gpu_overrides(tmp_path: Path, name: str, *extra: str) -> list[str]:
    from test_training import TINY, write_tiny_cache

    cache = tmp_path / "cache"
    if not cache.exists():
        write_tiny_cache(cache)
    accelerator = "gpu" if DEVICE == "cuda" else "cpu"
    tiny = [o for o in TINY if not o.startswith(("train.accelerator", "train.devices"))]
    return [*tiny, f"data.cache_dir={cache}", f"train.out_dir={tmp_path / name}", f"train.accelerator={accelerator}",
            "train.devices=1", "train.sample_every_n_epochs=0", "train.max_steps=6", "train.ckpt_every_n_steps=1",
            *extra]


@pytest.fixture(scope="module")
def cuda_runs(tmp_path_factory):
    """bf16-mixed: 6 steps straight; 3 steps, a crash, then a resume to 6. fp32: 2 steps. On DEVICE."""
    from test_training import CrashAt

    from jsddpm.training.trainer import train

    tmp = tmp_path_factory.mktemp("gpu_runs")
    runs = {}
    # deterministic kernels where CUDA has them: Adam turns the rounding noise of atomics into whole steps
    # for parameters with near-zero gradients, which an exact-resume comparison cannot tell from a lost state
    torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn = torch.backends.cudnn
    before = (cudnn.deterministic, cudnn.benchmark)
    cudnn.deterministic, cudnn.benchmark = True, False
    for name, extra, crash in (("straight", (), None), ("resumed", (), 3), ("fp32", ("train.max_steps=2",), None)):
        precision = "32" if name == "fp32" else "bf16-mixed"
        cfg = load_config(None, gpu_overrides(tmp, name, f"train.precision={precision}", *extra))
        record = RecordPrecision()
        if crash:
            with pytest.raises(RuntimeError, match="simulated crash"):
                train(cfg, callbacks=[CrashAt(crash)])
            cfg = load_config(None, gpu_overrides(tmp, name, f"train.precision={precision}", "train.resume=auto"))
        train(cfg, callbacks=[record])
        runs[name] = (tmp / name, record)
    torch.use_deterministic_algorithms(False)
    cudnn.deterministic, cudnn.benchmark = before
    return runs


def test_resume_on_device_reproduces_uninterrupted_training(cuda_runs):
    paths = [cuda_runs[name][0] / "checkpoints" / "last.ckpt" for name in ("straight", "resumed")]
    a, b = (Checkpoint.load(p) for p in paths)  # read back as generation reads them: finite, with a record
    assert a.global_step == b.global_step == 6
    # same data order, noise, optimiser, EMA and RNG states; cuDNN may pick kernels that add in another
    # order between processes, so allow float rounding (a lost state is orders of magnitude larger)
    for key, value in a.state_dict.items():
        torch.testing.assert_close(b.state_dict[key], value, rtol=0, atol=1e-5, msg=key)
    a_sched, b_sched = (torch.load(p, weights_only=True)["lr_schedulers"] for p in paths)
    assert a_sched == b_sched


def test_precision_is_exactly_what_was_configured(cuda_runs):
    bf16, fp32 = cuda_runs["straight"][1], cuda_runs["fp32"][1]
    assert bf16.precision == "bf16-mixed" and bf16.out_dtypes == {torch.bfloat16}
    assert fp32.precision == "32-true" and fp32.out_dtypes == {torch.float32}
    assert fp32.matmul == bf16.matmul == {"highest"}  # no TF32 switched on behind the user's back
    saved = load_config(str(cuda_runs["fp32"][0] / "config.yaml"))
    assert str(saved.train.precision) == "32"


def test_generation_is_identical_at_batch_8_and_32(cuda_runs, tmp_path):
    ckpt = cuda_runs["straight"][0] / "checkpoints" / "last.ckpt"
    device = "cuda:0" if DEVICE == "cuda" else "cpu"
    sets = []
    for batch in (8, 32):
        out = tmp_path / f"b{batch}"
        assert main(["generate", "--ckpt", str(ckpt), "--out", str(out), f"sample.batch_size={batch}",
                     f"sample.device={device}", "sample.n_per_condition=5", "sample.steps=8"]) == 0
        with np.load(out / "samples.npz") as z:
            sets.append({k: z[k] for k in z.files})
    a, b = sets
    assert len(a["images"]) == 40 and np.array_equal(a["seed"], b["seed"])
    assert str(a["cache_fingerprint"]) == Checkpoint.load(ckpt).cache_fingerprint  # where the pairs came from
    # per-sample seeds make the draws the same; a kernel chosen for another batch shape may round
    # differently, so the images agree to float rounding and the thresholded masks almost everywhere
    np.testing.assert_allclose(a["images"][:, :-1], b["images"][:, :-1], rtol=0, atol=1e-3)
    assert np.mean(a["images"][:, -1] != b["images"][:, -1]) < 1e-3


def test_unet_channels_last_under_bf16_matches_contiguous_layout():
    from jsddpm.model import build_model

    cfg = load_config("demo_cpu" if ON_CPU else "res96")
    torch.manual_seed(0)
    nhwc = build_model(cfg, verbose=False).to(DEVICE)
    with torch.no_grad():
        for p in nhwc.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0.0, 0.02)
    nchw = copy.deepcopy(nhwc).to(memory_format=torch.contiguous_format)
    nchw.channels_last = False
    assert nhwc.channels_last
    layouts = []
    first_conv = next(m for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(
        lambda m, i, o: layouts.append(i[0].is_contiguous(memory_format=torch.channels_last)))
    batch = random_batch(cfg, 4, DEVICE)
    t = torch.randint(0, 1000, (4,), device=DEVICE)
    cond = {"label": batch["label"], "z": batch["z"], "prior": batch["prior"]}
    outs = []
    for net in (nhwc, nchw):
        with torch.autocast(device_type=DEVICE, dtype=torch.bfloat16):
            out = net(batch["x"], t, **cond)
        out.float().square().mean().backward()
        outs.append((out.float(), torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])))
    assert layouts == [True]
    (o1, g1), (o2, g2) = outs
    assert torch.isfinite(o1).all() and torch.isfinite(g1).all()
    assert (o1 - o2).abs().max() <= 0.05 * o2.abs().max()  # bf16 rounding, different kernels
    assert torch.nn.functional.cosine_similarity(g1, g2, dim=0) > BF16_GRAD_COSINE

"""The UNet: channel arithmetic, conditioning and classifier-free-guidance dropping, gradient flow,
determinism and batch independence, config errors, presets. Tiny models (8-16 channels, 16 px)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from jsddpm.config import PRESET_DIR, load_config
from jsddpm.errors import UserError
from jsddpm.model import build_model, count_parameters
from jsddpm.model.blocks import Upsample
from jsddpm.model.conditioning import sinusoidal_embedding

SIZE = 16
TINY = ["data.image_size=16", "model.base_channels=8", "model.channel_mult=[1,2]", "model.norm_groups=4",
        "model.attention_resolutions=[8]", "model.attention_head_dim=4", "model.prior_attention_resolutions=[16,8]",
        "model.prior_tokens=4", "model.prior_channels=8"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: threads only add synchronisation (and contention on a shared CI machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(*overrides: str, verbose: bool = False):
    torch.manual_seed(0)
    cfg = load_config(None, TINY + list(overrides))
    return build_model(cfg, verbose=verbose)


def randomise(net: torch.nn.Module) -> torch.nn.Module:
    """Add noise to every parameter: zero-initialised output layers would otherwise make the output
    (and the gradients of everything before them) identically zero."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return net.eval()


def inputs(net, batch: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    c = net.data_channels
    return {
        "x_t": torch.randn(batch, c, SIZE, SIZE, generator=g),
        "t": torch.randint(0, 1000, (batch,), generator=g),
        "label": torch.randint(0, 2, (batch,), generator=g),
        "z": torch.rand(batch, generator=g),
        "prior": torch.rand(batch, 1, SIZE, SIZE, generator=g),
        "self_cond": torch.randn(batch, c, SIZE, SIZE, generator=g) if net.self_conditioning else None,
    }


@pytest.mark.parametrize("image_channels", [1, 3])
@pytest.mark.parametrize("joint_mask", [True, False])
@pytest.mark.parametrize("self_cond", [0.0, 0.5])
@pytest.mark.parametrize("prior", ["none", "concat", "cross_attention"])
def test_channel_arithmetic_and_output_shape(image_channels, joint_mask, self_cond, prior):
    net = tiny(f"model.image_channels={image_channels}", f"model.joint_mask={joint_mask}",
               f"diffusion.self_conditioning_prob={self_cond}", f"model.prior={prior}")
    data = image_channels + int(joint_mask)
    expected_in = data * (2 if self_cond > 0 else 1) + int(prior == "concat")
    assert net.input_conv.in_channels == expected_in == net.in_channels
    assert net.out_conv.out_channels == data
    kw = inputs(net, batch=3)
    with torch.no_grad():
        full = net(**kw)
        bare = net(kw["x_t"], kw["t"])  # every condition missing: the null condition, zero self-cond
    assert full.shape == bare.shape == (3, data, SIZE, SIZE)
    assert torch.isfinite(full).all()


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest", "transposed"])
@pytest.mark.parametrize("conv_first", [True, False])
def test_upsample_modes(mode, conv_first):
    up = Upsample(4, mode, conv_first)
    assert up(torch.randn(2, 4, 5, 6)).shape == (2, 4, 10, 12)
    net = randomise(tiny(f"model.upsample={mode}", f"model.upsample_conv_first={conv_first}"))
    kw = inputs(net)
    with torch.no_grad():
        assert net(**kw).shape == kw["x_t"].shape


def test_sinusoidal_embedding_matches_formula():
    values = torch.tensor([0.0, 3.0, 250.5])
    emb = sinusoidal_embedding(values, 6)
    freqs = [10000.0 ** (-k / 3) for k in range(3)]
    expected = [[math.cos(v * f) for f in freqs] + [math.sin(v * f) for f in freqs] for v in values.tolist()]
    torch.testing.assert_close(emb, torch.tensor(expected))
    assert sinusoidal_embedding(values, 7).shape == (3, 7)


@pytest.mark.parametrize("prior", ["concat", "cross_attention"])
def test_drop_cond_removes_every_condition(prior):
    net = randomise(tiny(f"model.prior={prior}", "model.dropout=0.2"))
    a, b = inputs(net, seed=0), inputs(net, seed=1)
    x_t, t = a["x_t"], a["t"]
    # z values in one z-bin still differ: z is embedded continuously, not looked up by bin
    cond_a = {"label": torch.tensor([0, 0]), "z": torch.tensor([0.50, 0.50]), "prior": a["prior"]}
    cond_b = {"label": torch.tensor([1, 1]), "z": torch.tensor([0.52, 0.52]), "prior": b["prior"]}
    with torch.no_grad():
        dropped_a = net(x_t, t, **cond_a, drop_cond=torch.tensor([True, True]))
        dropped_b = net(x_t, t, **cond_b, drop_cond=True)
        null = net(x_t, t)
        kept_a = net(x_t, t, **cond_a, drop_cond=torch.tensor([False, False]))
        one_changed = {name: net(x_t, t, **{**cond_a, name: cond_b[name]}) for name in cond_a}
        mixed = net(x_t, t, **cond_a, drop_cond=torch.tensor([True, False]))
    torch.testing.assert_close(dropped_a, dropped_b, rtol=0, atol=1e-6)
    torch.testing.assert_close(dropped_a, null, rtol=0, atol=1e-6)
    for name, out in one_changed.items():
        assert (out - kept_a).abs().max() > 1e-4, f"changing {name} does not change the output"
    assert (kept_a - dropped_a).abs().max() > 1e-4
    # the flag acts per sample
    torch.testing.assert_close(mixed[0], dropped_a[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[1], kept_a[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize(("prior", "norm2"), [("concat", True), ("cross_attention", True), ("concat", False)])
def test_gradient_reaches_every_parameter(prior, norm2):
    net = randomise(tiny(f"model.prior={prior}", "diffusion.self_conditioning_prob=0.5",
                         f"model.resblock_norm2={norm2}")).train()
    kw = inputs(net)
    out = net(**kw, drop_cond=torch.tensor([False, True]))  # the null embeddings learn from dropped samples
    out.square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"
    if prior == "cross_attention":
        assert any(name.startswith("prior_encoder.") for name, _ in net.named_parameters())


def test_eval_is_deterministic_and_batch_independent():
    net = randomise(tiny("model.prior=cross_attention", "model.dropout=0.3"))
    kw = inputs(net, batch=4)
    drop = torch.tensor([False, True, False, False])
    with torch.no_grad():
        first = net(**kw, drop_cond=drop)
        again = net(**kw, drop_cond=drop)
        singles = torch.cat([net(**{k: v[i:i + 1] for k, v in kw.items() if v is not None}, drop_cond=drop[i:i + 1])
                             for i in range(4)])
        order = torch.tensor([2, 0, 3, 1])
        shuffled = net(**{k: v[order] for k, v in kw.items() if v is not None}, drop_cond=drop[order])
    assert torch.equal(first, again)
    torch.testing.assert_close(singles, first, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shuffled, first[order], rtol=1e-5, atol=1e-5)
    # dropout is active in training mode
    with torch.no_grad():
        net.train()
        assert not torch.equal(net(**kw, drop_cond=drop), first)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.norm_groups=3"], "model.norm_groups"),
        (["data.image_size=18", "model.channel_mult=[1,2,2]"], "data.image_size"),
        (["model.attention_resolutions=[12]"], "model.attention_resolutions"),
        (["model.prior=cross_attention", "model.prior_tokens=5"], "model.prior_tokens"),
    ],
)
def test_bad_model_config_is_one_line_user_error(overrides, key):
    with pytest.raises(UserError) as err:
        tiny(*overrides)
    message = str(err.value)
    assert key in message and "\n" not in message


def test_parameter_count_printed_once_and_silenceable(capsys):
    net = tiny(verbose=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and f"{count_parameters(net):,}" in lines[0]
    tiny(verbose=False)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("name", ["res40", "res96", "res128", "res160", "res256"])
def test_resolution_presets_build_with_their_attention_levels(name):
    cfg = load_config(name)
    assert (PRESET_DIR / f"{name}.yaml").exists()
    with torch.device("meta"):  # no memory, no init cost: only the structure is checked
        net = build_model(cfg, verbose=False)
    size, levels = cfg.data.image_size, len(cfg.model.channel_mult)
    sizes = [size // 2**i for i in range(levels)]
    attention_sizes = {s for s in sizes if s in set(cfg.model.attention_resolutions)}
    assert attention_sizes == set(cfg.model.attention_resolutions)
    assert sizes[-1] in attention_sizes  # every preset attends at its bottleneck
    n_attention = sum(type(m).__name__ == "SelfAttention" for m in net.modules())
    per_level = 2 * cfg.model.num_res_blocks + 1  # down blocks + up blocks
    assert n_attention == per_level * len(attention_sizes) + 1  # + the middle block


def test_channels_last_speedups_leave_outputs_and_gradients_unchanged():
    """The channels-last layout and its gradient-layout fix-up are pure speed: same maths as NCHW."""
    fast = randomise(tiny("model.prior=cross_attention", "model.upsample=bilinear")).train()
    plain = copy.deepcopy(fast).to(memory_format=torch.contiguous_format)
    plain.channels_last = False
    kw = inputs(fast)
    outs = []
    for net in (fast, plain):
        out = net(**kw, drop_cond=torch.tensor([False, True]))
        out.square().mean().backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=name)

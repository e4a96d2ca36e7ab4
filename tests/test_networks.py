"""Generator and discriminator: ops, schedule, parameter counts and architectural properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uh_train.format.geometry import patch_transform
from uh_train.networks import Discriminator, Generator, get_preset, patch_transforms, synthesis_schedule
from uh_train.networks.generator import GeneratorConfig
from uh_train.networks.ops import filtered_lrelu, lowpass_filter, modulated_conv2d, upfirdn2d
from uh_train.render import psnr


def _generator(preset: str = "tiny", seed: int = 0, **overrides) -> Generator:
    torch.manual_seed(seed)
    G = Generator(get_preset(preset, **overrides).generator).eval().requires_grad_(False)
    with torch.no_grad():  # calibrate the magnitude EMAs as a few training steps would
        for _ in range(2):
            G(torch.randn(4, G.z_dim), update_emas=True)
    return G


# --- ops -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("numtaps,cutoff,width,fs", [(12, 2.0, 6.6, 32.0), (24, 11.3, 9.0, 128.0), (12, 128, 90, 512)])
def test_lowpass_filter_is_scipy_firwin(numtaps, cutoff, width, fs):
    import scipy.signal

    expected = scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs).astype(np.float32)
    assert np.array_equal(lowpass_filter(numtaps, cutoff, width, fs).numpy(), expected)
    assert lowpass_filter(1, cutoff, width, fs) is None


def test_every_layers_filters_are_designed_by_firwin_with_stylegan3s_arguments(monkeypatch):
    """Up filter: the input's cutoff and twice its half-width; down filter: the output's; both at
    the layer's temporary (upsampled) rate, as StyleGAN3's synthesis layers call scipy's firwin."""
    import scipy.signal

    calls = []
    firwin = scipy.signal.firwin

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return firwin(*args, **kwargs)

    monkeypatch.setattr(scipy.signal, "firwin", spy)
    cfg = get_preset("tiny").generator
    G = Generator(cfg)
    expected = []
    for layer in (m for m in G.modules() if hasattr(m, "up_filter") and hasattr(m, "spec")):
        spec = layer.spec
        rate = max(spec.in_sampling_rate, spec.out_sampling_rate) * (1 if spec.is_torgb else cfg.lrelu_upsampling)
        for f, cutoff, half_width in ((layer.up_filter, spec.in_cutoff, spec.in_half_width),
                                      (layer.down_filter, spec.out_cutoff, spec.out_half_width)):
            if f is not None:
                args = {"numtaps": len(f), "cutoff": cutoff, "width": half_width * 2, "fs": rate}
                expected.append(args)
                assert np.array_equal(f.numpy(), firwin(**args).astype(np.float32))
    assert len(expected) >= 4 and calls == expected


@pytest.mark.parametrize("up,down,padding", [(2, 3, (2, 1, 3, -1)), (4, 1, (-3, -4, 5, 2)), (1, 2, (1, 2, 0, 3)),
                                             (2, 1, (4, 3, 4, 3)), (2, 2, (4, 3, 5, 1))])
def test_upfirdn2d_equals_explicit_zero_insertion_and_convolution(up, down, padding):
    """Values and input gradients. (4, 3) with up = 2 and 7 taps crops the full upsampled
    convolution by the same amount at both ends, as every generator layer does."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 9, requires_grad=True)
    f = torch.tensor([0.1, 0.2, 0.4, 0.2, 0.1, 0.05, 0.3])
    y = upfirdn2d(x, f, up=up, down=down, padding=padding, gain=up * up)
    # Reference: dense 2-D zero insertion, pad/crop, 2-D conv with the outer-product filter, decimate.
    dense = torch.zeros(2, 3, 7 * up, 9 * up)
    dense[:, :, ::up, ::up] = x
    px0, px1, py0, py1 = padding
    dense = F.pad(dense, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    dense = dense[:, :, max(-py0, 0) : dense.shape[2] - max(-py1, 0), max(-px0, 0) : dense.shape[3] - max(-px1, 0)]
    k = (f[:, None] * f[None, :] * up * up).flip(0, 1)
    ref = F.conv2d(dense.reshape(6, 1, *dense.shape[2:]), k[None, None])
    ref = ref.reshape(2, 3, *ref.shape[2:])[:, :, ::down, ::down]
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(ref)
    got_grad, = torch.autograd.grad((y * weights).sum(), x)
    ref_grad, = torch.autograd.grad((ref * weights).sum(), x)
    torch.testing.assert_close(got_grad, ref_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_modulated_conv_equals_per_sample_convolution_with_scaled_weights(fused):
    torch.manual_seed(0)
    x, w, s = torch.randn(3, 4, 6, 6), torch.randn(5, 4, 3, 3), torch.randn(3, 4)
    y = modulated_conv2d(x, w, s, demodulate=True, padding=1, fused=fused)
    for i in range(3):
        wi = w * s[i].view(1, 4, 1, 1)
        wi = wi / wi.square().sum(dim=[1, 2, 3], keepdim=True).sqrt()
        torch.testing.assert_close(y[i : i + 1], F.conv2d(x[i : i + 1], wi, padding=1), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("gain_shape", [(), (4,)])
def test_modulated_conv_grouped_and_shared_convolution_agree_in_values_and_gradients(demodulate, gain_shape):
    """The grouped convolution (one weight per sample) and the shared one (styles on the input,
    demodulation on the output) are the same function of every input, with input gain and bias."""
    torch.manual_seed(0)
    inputs = [torch.randn(3, 4, 6, 6), torch.randn(5, 4, 3, 3), torch.randn(3, 4), torch.rand(gain_shape) + 0.5,
              torch.randn(5)]
    results = []
    for fused in (True, False):
        x, w, s, g, b = (t.clone().requires_grad_(True) for t in inputs)
        y = modulated_conv2d(x, w, s, demodulate=demodulate, padding=1, input_gain=g, bias=b, fused=fused)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append([y, x.grad, w.grad, s.grad, g.grad, b.grad])
    for got, ref in zip(*results, strict=True):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_modulated_conv_picks_the_shared_convolution_on_a_cpu_for_channels_off_multiples_of_8(monkeypatch):
    calls = []
    real = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: calls.append(k.get("groups", 1)) or real(*a, **k))
    for in_ch, out_ch in ((8, 16), (13, 8), (16, 45)):
        modulated_conv2d(torch.randn(2, in_ch, 5, 5), torch.randn(out_ch, in_ch, 3, 3), torch.randn(2, in_ch))
    assert calls == [2, 1, 1]


@pytest.mark.parametrize("channels_last", [None, False])
@pytest.mark.parametrize("clamp", [None, 0.5, 1e6])
@pytest.mark.parametrize("up,down", [(2, 2), (1, 1), (4, 2)])
def test_filtered_lrelu_equals_its_definition_in_values_and_gradients(up, down, clamp, channels_last):
    """bias -> upsample -> leaky ReLU x gain -> clamp -> downsample, written out step by step: the
    gain folded into the filter and the clamp skipped when inactive change neither the values nor
    the gradients (clamp 0.5 is active here, 1e6 is not)."""
    torch.manual_seed(0)
    x, bias = torch.randn(2, 3, 10, 10), torch.randn(3)
    fu = torch.tensor([0.05, 0.2, 0.5, 0.2, 0.05, 0.1, 0.3, 0.1]) if up > 1 else None
    fd = torch.tensor([0.1, 0.4, 0.4, 0.1]) if down > 1 else None
    pad = (3, 2, 3, 2)

    def reference(x, bias, clamp=clamp):
        y = upfirdn2d(x + bias.view(1, -1, 1, 1), fu, up=up, padding=pad, gain=up**2)
        y = F.leaky_relu(y, 0.2) * math.sqrt(2)
        y = y.clamp(-clamp, clamp) if clamp is not None else y
        return upfirdn2d(y, fd, down=down)

    xa, ba = x.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    xb, bb = x.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    got = filtered_lrelu(xa, fu, fd, ba, up, down, pad, gain=math.sqrt(2), slope=0.2, clamp=clamp,
                         channels_last=channels_last)
    assert got.is_contiguous()
    ref = reference(xb, bb)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(ref)
    (got * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ba.grad, bb.grad, atol=1e-5, rtol=1e-5)
    if clamp == 0.5:  # the clamp did act
        assert (reference(x, bias, None) - ref).abs().max() > 0.1


def test_modulated_conv_bias_is_added_per_output_channel():
    torch.manual_seed(0)
    x, w, s, b = torch.randn(3, 4, 6, 6), torch.randn(5, 4, 3, 3), torch.randn(3, 4), torch.randn(5)
    torch.testing.assert_close(modulated_conv2d(x, w, s, padding=1, bias=b),
                               modulated_conv2d(x, w, s, padding=1) + b.view(1, -1, 1, 1), atol=1e-5, rtol=1e-5)


# --- schedule and sizes --------------------------------------------------------------------------

# StyleGAN3-T at 256 px (layer names encode output size and channels).
PAPER_LAYERS = ["L0_36_512", "L1_36_512", "L2_36_512", "L3_52_512", "L4_52_512", "L5_84_512", "L6_84_512",
                "L7_148_512", "L8_148_512", "L9_148_362", "L10_276_256", "L11_276_181", "L12_276_128",
                "L13_256_128", "L14_256_3"]


def test_paper_schedule_is_stylegan3_t_at_256():
    first, specs = synthesis_schedule(get_preset("paper").generator)
    assert [s.name for s in specs] == PAPER_LAYERS
    assert first == {"channels": 512, "size": 36, "sampling_rate": 16.0, "bandwidth": 2.0}
    assert [s.out_sampling_rate for s in specs] == [16] * 3 + [32] * 2 + [64] * 2 + [128] * 3 + [256] * 5
    assert specs[-1].is_torgb and [s.is_critically_sampled for s in specs].count(True) == 3


def test_paper_layer_padding_and_filters_follow_the_schedule():
    G = Generator(GeneratorConfig(channel_base=256, channel_max=4))  # paper schedule, few channels
    layers = [getattr(G.synthesis, n) for n in G.synthesis.layer_names]
    assert layers[0].padding == (9, 8, 9, 8) and layers[3].padding == (-6, -9, -6, -9)
    assert layers[13].padding == (-11, -12, -11, -12) and layers[14].padding == (0, 0, 0, 0)
    assert layers[3].up_filter.shape == (24,) and layers[3].down_filter.shape == (12,)
    assert layers[14].up_filter is None and layers[14].down_filter is None
    for layer in layers[:-1]:
        assert layer.up_filter.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_paper_parameter_counts_are_near_the_papers():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    preset = get_preset("paper")
    G = Generator(preset.generator)
    scale_part = sum(p.numel() for n, p in G.named_parameters() if "scale" in n)
    assert abs(count(G) - 28e6) / 28e6 < 0.10, count(G)
    assert abs(count(G) - scale_part - 28.47e6) < 0.05e6  # StyleGAN3-T 256 px without scale conditioning
    D = Discriminator(preset.discriminator)
    assert abs(count(D) - 55e6) / 55e6 < 0.10, count(D)


# --- generator behaviour -------------------------------------------------------------------------


def test_generator_output_shape_range_and_determinism():
    G = _generator()
    z = torch.randn(3, G.z_dim)
    a, b = G(z), G(z)
    assert a.shape == (3, 3, 32, 32)
    assert torch.equal(a, b)
    assert a.abs().max() < 3 and a.std() > 0.02
    G2 = _generator()  # same seed, same weights, same pixels
    assert torch.equal(G2(z), a)


def test_same_z_and_patch_give_same_pixels_alone_or_in_a_batch():
    G = _generator()
    z = torch.randn(4, G.z_dim)
    t = patch_transforms([[0.3, 0.6], [0.5, 0.5], [0.7, 0.2], [0.45, 0.8]], [2.0, 1.0, 4.0, 1.5])
    batch = G(z, t)
    for i in range(4):
        torch.testing.assert_close(G(z[i : i + 1], t[i : i + 1]), batch[i : i + 1], atol=1e-5, rtol=0)


def test_patch_transforms_use_the_spatial_convention():
    t = patch_transforms([[0.3, 0.6]], 2.0)
    np.testing.assert_allclose(t[0].numpy(), patch_transform((0.3, 0.6), 2.0), atol=1e-7)
    G = _generator()
    z = torch.randn(2, G.z_dim)
    torch.testing.assert_close(G(z, None), G(z, patch_transforms([[0.5, 0.5]] * 2, 1.0)))


@pytest.mark.parametrize("preset,shift", [("tiny", 1), ("tiny", 3), pytest.param("small", 5, marks=pytest.mark.slow)])
def test_moving_v_by_k_pixels_shifts_the_output_by_k_pixels(preset, shift):
    G = _generator(preset)
    r = G.img_resolution
    ws = G.mapping(torch.randn(2, G.z_dim))
    for s in (1.0, 2.0):
        a = G.synthesis(ws, patch_transforms([[0.5, 0.5]] * 2, s))
        b = G.synthesis(ws, patch_transforms([[0.5 + shift / (r * s), 0.5 - shift / (r * s)]] * 2, s))
        # b[y, x] = a[y - shift, x + shift]; compare the interior where both exist.
        m = 4
        shifted = psnr(b[:, :, m + shift : -m, m : -m - shift], a[:, :, m : -m - shift, m + shift : -m])
        unshifted = psnr(a[:, :, m:-m, m:-m], b[:, :, m:-m, m:-m])
        assert shifted >= 35, shifted
        assert shifted > unshifted + 20, (shifted, unshifted)  # the alignment is what makes them agree


def test_out_of_band_frequencies_are_damped_when_zooming_out():
    G = _generator()
    inp = G.synthesis.input
    w = G.mapping(torch.randn(1, G.z_dim))[:, 0]
    energy = [inp(w, patch_transforms([[0.5, 0.5]], s)).square().mean().item() for s in (1 / 8, 1 / 4, 1.0)]
    # Zooming out multiplies every frequency by 1/s; those above the grid's band fade to zero.
    assert energy[0] < 0.1 * energy[2] and energy[0] < energy[1] < energy[2]


def test_magnitude_ema_changes_only_when_asked():
    torch.manual_seed(0)
    G = Generator(get_preset("tiny").generator)
    layer = getattr(G.synthesis, G.synthesis.layer_names[0])
    z = torch.randn(4, G.z_dim)
    with torch.no_grad():
        G(z)
        assert layer.magnitude_ema.item() == 1.0
        G(z, update_emas=True)
    assert layer.magnitude_ema.item() != 1.0
    x = G.synthesis.input(G.mapping(z)[:, 0], torch.eye(3).expand(4, 3, 3))
    expected = x.square().mean().lerp(torch.tensor(1.0), G.cfg.magnitude_ema_beta)
    assert layer.magnitude_ema.item() == pytest.approx(expected.item(), rel=1e-5)


def test_truncation_pulls_w_towards_w_avg():
    G = _generator()
    z = torch.randn(2, G.z_dim)
    ws, wt = G.mapping(z), G.mapping(z, truncation_psi=0.5)
    torch.testing.assert_close(wt, G.mapping.w_avg.lerp(ws, 0.5))
    wc = G.mapping(z, truncation_psi=0.0, truncation_cutoff=3)
    torch.testing.assert_close(wc[:, :3], G.mapping.w_avg.expand(2, 3, -1))
    torch.testing.assert_close(wc[:, 3:], ws[:, 3:])


def test_scale_conditioning_starts_neutral_and_then_depends_on_scale():
    G = _generator()
    G_plain = Generator(get_preset("tiny", scale_norm="none").generator).eval().requires_grad_(False)
    G_plain.load_state_dict({k: v for k, v in G.state_dict().items() if "scale" not in k})
    z = torch.randn(2, G.z_dim)
    t = patch_transforms([[0.4, 0.4]] * 2, 3.0)
    torch.testing.assert_close(G(z, t), G_plain(z, t))  # zero-initialised scale affines
    for name in G.synthesis.layer_names:
        torch.nn.init.normal_(getattr(G.synthesis, name).scale_affine.weight)
    out3, out2 = G(z, t), G(z, patch_transforms([[0.4, 0.4]] * 2, 2.0))
    # Change only the conditioning, not the geometry: compare with the same patch rendered by G_plain.
    assert psnr(out3, G_plain(z, t)) < 40
    assert not torch.allclose(out2, G_plain(z, patch_transforms([[0.4, 0.4]] * 2, 2.0)))


def test_anyres_scale_normalisation_collapses_the_scale_input():
    G = Generator(get_preset("tiny", scale_norm="anyres-positive", scale_dim=32).generator)
    u = G.synthesis.normalized_scale(torch.tensor([1.0, 2.0, 8.0]))
    np.testing.assert_allclose(u.flatten().numpy(), [0.1, 1 / 7 + 0.1, 1.1], rtol=1e-6)
    # AnyRes normalises the 1-d input's 2nd moment, so every positive scale maps to the same vector.
    m = G.synthesis.scale_mapping
    torch.testing.assert_close(m(u[:1], normalize_input=True), m(u[2:], normalize_input=True), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(m(u[:1], normalize_input=False), m(u[2:], normalize_input=False))


# --- discriminator -------------------------------------------------------------------------------


def test_discriminator_heads_and_pixel_head_batch_independence():
    torch.manual_seed(0)
    D = Discriminator(get_preset("tiny").discriminator)
    x = torch.randn(4, 3, 32, 32)
    g, p = D(x)
    assert g.shape == (4, 1) and p.shape == (4, 1, 32, 32)
    g1, p1 = D(x[:1])
    torch.testing.assert_close(p1, p[:1], atol=1e-5, rtol=1e-5)  # decoder starts before mbstd
    assert not torch.allclose(g1, g[:1])  # the global head sees the minibatch standard deviation
    # Per-pixel logits respond locally: changing one corner leaves the far corner's logits alone.
    y = x.clone()
    y[:, :, :4, :4] += 3
    _, py = D(y)
    assert not torch.allclose(py[:, :, :4, :4], p[:, :, :4, :4])
    g.sum().backward()  # both heads are differentiable w.r.t. the weights
    assert D.fromrgb.weight.grad is not None and math.isfinite(D.fromrgb.weight.grad.abs().sum().item())


def test_one_discriminator_pass_over_chunks_equals_separate_passes():
    """Reals, fakes and CutMix images in one D pass (chunks=3) give each chunk the logits of its own
    pass: the minibatch standard deviation never mixes reals with fakes."""
    torch.manual_seed(0)
    D = Discriminator(get_preset("tiny").discriminator)
    parts = [torch.randn(4, 3, 32, 32) + k for k in range(3)]
    g, p = D(torch.cat(parts), chunks=3)
    for k, x in enumerate(parts):
        gk, pk = D(x)
        torch.testing.assert_close(g[4 * k: 4 * k + 4], gk, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(p[4 * k: 4 * k + 4], pk, atol=1e-5, rtol=1e-5)
    g_mixed, _ = D(torch.cat(parts))  # without chunks the statistics span reals and fakes
    assert not torch.allclose(g_mixed[:4], D(parts[0])[0], atol=1e-4)
    with pytest.raises(ValueError, match="equal chunks"):
        D(torch.randn(5, 3, 32, 32), chunks=2)

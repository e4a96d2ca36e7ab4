"""Continuous-resolution generator: StyleGAN3-T with a transformable Fourier input (paper §3.2).

Public API (all tensors float32; images are in about [-1, 1]):

* `Generator(cfg: GeneratorConfig)`; `G.forward(z [N, z_dim], transform [N, 3, 3] | None,
  truncation_psi=1.0, update_emas=False) -> images [N, 3, r, r]`.
* `G.mapping(z, truncation_psi=1.0, truncation_cutoff=None, update_emas=False) -> ws
  [N, num_ws, w_dim]`.
* `G.synthesis(ws, transform=None, canvas=1, update_emas=False) -> images [N, 3, canvas*r,
  canvas*r]`.

`transform` is the paper's T(v,s) (Eq. 4, `uh_train.format.geometry.patch_transform`): it maps patch
coordinates (unit side, centred at 0) to full-body space (centred at 0); None means identity, the
whole image. The Fourier input evaluates its features at T(x) (Eq. 5) -- frequencies by the 2x2 part, phases
by the translation -- and damps frequencies the input grid cannot represent. The scale conditioning
input is derived from the transform: s = 1 / T[0, 0] (pixel density relative to the r-pixel full
image).

`canvas=k` evaluates every layer on a grid k times larger (same margins, same filters in pixel
units), which renders k x k neighbouring patches in one pass: with transform T(v, s) the output
covers the square of side k/s around v at k*r pixels. `canvas=k` with T((0.5, 0.5), k) is the whole
image at k*r pixels, equal (up to the patches' margin truncation) to stitching k x k patches at
scale k. Integer k only: the canvas grid must contain every patch grid.

The layer schedule (sizes, sampling rates, cutoffs, channels, filters) is derived in one place,
`synthesis_schedule`, from the few numbers of `GeneratorConfig`. State-dict keys follow StyleGAN3's
names (`synthesis.L3_52_512.weight`, ...) so released snapshots map one to one; the scale
conditioning lives at `synthesis.scale_mapping.*` and `synthesis.<layer>.scale_affine.*`.

StyleGAN3-T has no noise inputs, so there is no noise_mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..format.geometry import SCALE_MAX, PatchView, scale_of
from .ops import FullyConnected, filtered_lrelu, lowpass_filter, modulated_conv2d, normalize_2nd_moment

SCALE_NORMS = ("none", "log", "anyres-positive", "anyres-zerocentered")


@dataclass(frozen=True)
class GeneratorConfig:
    """The few numbers the whole generator is derived from (StyleGAN3-T defaults at r = 256)."""

    img_resolution: int = 256  # r, the patch size in pixels
    img_channels: int = 3
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 2
    channel_base: int = 32768
    channel_max: int = 512
    num_layers: int = 14  # synthesis layers before ToRGB
    num_critical: int = 2  # critically sampled layers at the end
    first_cutoff: float = 2.0
    first_stopband: float = 2**2.1
    last_stopband_rel: float = 2**0.3
    margin_size: int = 10
    output_scale: float = 0.25
    conv_clamp: float | None = 256.0
    magnitude_ema_beta: float = 0.5 ** (32 / 20000)  # batch 32
    filter_size: int = 6  # taps per resampling factor
    lrelu_upsampling: int = 2
    # Scale conditioning: a mapping network from the normalised scale to one vector per layer, turned
    # into a style offset by each layer's `scale_affine`. "log": log(s)/log(scale_max), ours;
    # "anyres-*": AnyRes GAN's normalisations (followed by its 2nd-moment normalisation of the 1-d
    # input, which makes the conditioning nearly constant); "none": no scale conditioning.
    scale_norm: str = "log"
    scale_dim: int = 128
    scale_min: float = 1.0
    scale_max: float = SCALE_MAX
    name: str = field(default="custom", compare=False)

    def __post_init__(self):
        if self.scale_norm not in SCALE_NORMS:
            raise ValueError(f"scale_norm must be one of {SCALE_NORMS}, got {self.scale_norm!r}")

    @property
    def num_ws(self) -> int:
        return self.num_layers + 2


@dataclass(frozen=True)
class LayerSpec:
    """One synthesis layer of the schedule (index N = num_layers is ToRGB)."""

    name: str
    in_channels: int
    out_channels: int
    in_size: int  # spatial size at canvas 1 (sampling rate + 2 margins, or r for the last two)
    out_size: int
    in_sampling_rate: float
    out_sampling_rate: float
    in_cutoff: float
    out_cutoff: float
    in_half_width: float
    out_half_width: float
    is_torgb: bool
    is_critically_sampled: bool


def synthesis_schedule(cfg: GeneratorConfig) -> tuple[dict, list[LayerSpec]]:
    """The StyleGAN3 schedule: cutoffs grow geometrically from first_cutoff to r/2 over the first
    N - num_critical layers; sampling rates are the next power of two above twice the stopband.
    Returns (input layer numbers, layer specs L0..L_N)."""
    n, r = cfg.num_layers, cfg.img_resolution
    last_cutoff = r / 2
    last_stopband = last_cutoff * cfg.last_stopband_rel
    exponents = np.minimum(np.arange(n + 1) / (n - cfg.num_critical), 1)
    cutoffs = cfg.first_cutoff * (last_cutoff / cfg.first_cutoff) ** exponents
    stopbands = cfg.first_stopband * (last_stopband / cfg.first_stopband) ** exponents
    rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, r))))
    half_widths = np.maximum(stopbands, rates / 2) - cutoffs
    sizes = rates + cfg.margin_size * 2
    sizes[-2:] = r
    channels = np.rint(np.minimum((cfg.channel_base / 2) / cutoffs, cfg.channel_max))
    channels[-1] = cfg.img_channels
    specs = []
    for i in range(n + 1):
        p = max(i - 1, 0)
        specs.append(
            LayerSpec(
                name=f"L{i}_{int(sizes[i])}_{int(channels[i])}",
                in_channels=int(channels[p]),
                out_channels=int(channels[i]),
                in_size=int(sizes[p]),
                out_size=int(sizes[i]),
                in_sampling_rate=float(rates[p]),
                out_sampling_rate=float(rates[i]),
                in_cutoff=float(cutoffs[p]),
                out_cutoff=float(cutoffs[i]),
                in_half_width=float(half_widths[p]),
                out_half_width=float(half_widths[i]),
                is_torgb=i == n,
                is_critically_sampled=i >= n - cfg.num_critical,
            )
        )
    first = dict(channels=int(channels[0]), size=int(sizes[0]), sampling_rate=float(rates[0]),
                 bandwidth=float(cutoffs[0]))
    return first, specs


class MappingNetwork(nn.Module):
    """z -> w: 2nd-moment normalisation then `num_layers` FC+lrelu layers (lr x0.01); keeps the
    running mean w_avg for truncation."""

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int, w_avg_beta: float = 0.998):
        super().__init__()
        self.num_ws, self.num_layers, self.w_avg_beta = num_ws, num_layers, w_avg_beta
        dims = [z_dim] + [w_dim] * num_layers
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnected(dims[i], dims[i + 1], activation="lrelu", lr_multiplier=0.01))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
        normalize_input: bool = True,
    ) -> torch.Tensor:
        x = normalize_2nd_moment(z.float()) if normalize_input else z.float()
        with torch.autocast(device_type=x.device.type, enabled=False):  # the mapping runs in float32, as StyleGAN3's
            for i in range(self.num_layers):
                x = getattr(self, f"fc{i}")(x)
        if update_emas:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x[:, :cut] = self.w_avg.lerp(x[:, :cut], truncation_psi)
        return x


class SynthesisInput(nn.Module):
    """The transformed Fourier input of Eq. 5: sin(2pi (f . T(x) + phi)) on the layer-0 grid, then a learned
    channel mix. ws[0] adds a learned rotation and translation after T."""

    def __init__(self, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float, margin: int):
        super().__init__()
        self.channels, self.size, self.sampling_rate, self.bandwidth, self.margin = (
            channels, size, sampling_rate, bandwidth, margin)
        freqs = torch.randn(channels, 2)
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25)) * bandwidth
        self.weight = nn.Parameter(torch.randn(channels, channels))
        self.affine = FullyConnected(w_dim, 4, weight_init=0.0, bias_init=[1.0, 0.0, 0.0, 0.0])
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", torch.rand(channels) - 0.5)

    def forward(self, w: torch.Tensor, transform: torch.Tensor, canvas: int = 1) -> torch.Tensor:
        n = w.shape[0]
        t = self.affine(w)  # (cos, sin, tx, ty) of the learned rotation and translation
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        rot = torch.eye(3, device=w.device).repeat(n, 1, 1)
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = t[:, 0], -t[:, 1], t[:, 1], t[:, 0]
        tra = torch.eye(3, device=w.device).repeat(n, 1, 1)
        tra[:, 0, 2], tra[:, 1, 2] = -t[:, 2], -t[:, 3]
        m = rot @ tra @ transform  # patch coords -> (learned frame of) full-body space
        freqs = self.freqs.unsqueeze(0) @ m[:, :2, :2]  # [N, C, 2], cycles per patch unit
        phases = self.phases.unsqueeze(0) + (self.freqs.unsqueeze(0) @ m[:, :2, 2:]).squeeze(2)
        # Fade out frequencies above what this layer's sampling rate can carry (per patch unit).
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        size = canvas * int(self.sampling_rate) + 2 * self.margin
        # Pixel centres in patch units: the central `canvas` units are the output region.
        coords = (torch.arange(size, device=w.device, dtype=torch.float32) + 0.5 - size / 2) / self.sampling_rate
        gy, gx = torch.meshgrid(coords, coords, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1).view(1, size * size, 2)
        x = grid @ freqs.transpose(1, 2) + phases.unsqueeze(1)  # [N, H*W, C]
        x = torch.sin(x * (2 * math.pi)) * amplitudes.unsqueeze(1)
        x = x @ (self.weight / math.sqrt(self.channels)).t()
        return x.transpose(1, 2).reshape(n, self.channels, size, size)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (1x1 for ToRGB) followed by filtered leaky ReLU; tracks the magnitude of
    its input (magnitude EMA) and divides it out."""

    def __init__(self, spec: LayerSpec, cfg: GeneratorConfig):
        super().__init__()
        self.spec, self.is_torgb = spec, spec.is_torgb
        self.conv_kernel = 1 if spec.is_torgb else 3
        self.conv_clamp = cfg.conv_clamp
        self.magnitude_ema_beta = cfg.magnitude_ema_beta
        tmp_rate = max(spec.in_sampling_rate, spec.out_sampling_rate) * (1 if spec.is_torgb else cfg.lrelu_upsampling)
        self.up_factor = int(round(tmp_rate / spec.in_sampling_rate))
        self.down_factor = int(round(tmp_rate / spec.out_sampling_rate))
        up_taps = cfg.filter_size * self.up_factor if self.up_factor > 1 and not spec.is_torgb else 1
        down_taps = cfg.filter_size * self.down_factor if self.down_factor > 1 and not spec.is_torgb else 1
        self.affine = FullyConnected(cfg.w_dim, spec.in_channels, bias_init=1.0)
        if cfg.scale_norm != "none":
            # Zero-initialised: adding scale conditioning leaves a (stage-1) generator unchanged at
            # first, so the stage-2 student starts equal to its teacher.
            self.scale_affine = FullyConnected(cfg.scale_dim, spec.in_channels, weight_init=0.0, bias_init=0.0)
        self.weight = nn.Parameter(torch.randn(spec.out_channels, spec.in_channels, self.conv_kernel, self.conv_kernel))
        self.bias = nn.Parameter(torch.zeros(spec.out_channels))
        self.register_buffer("magnitude_ema", torch.ones([]))
        up_filter = lowpass_filter(up_taps, spec.in_cutoff, spec.in_half_width * 2, tmp_rate)
        down_filter = lowpass_filter(down_taps, spec.out_cutoff, spec.out_half_width * 2, tmp_rate)
        self.register_buffer("up_filter", up_filter)
        self.register_buffer("down_filter", down_filter)
        # Padding so that the output grid is centred on the input grid (StyleGAN3 App. C.3); it does
        # not depend on the canvas factor, because both sizes grow by canvas * sampling rate.
        pad_total = (spec.out_size - 1) * self.down_factor + 1
        pad_total -= (spec.in_size + self.conv_kernel - 1) * self.up_factor
        pad_total += up_taps + down_taps - 2
        pad_lo = (pad_total + self.up_factor) // 2
        self.padding = (pad_lo, pad_total - pad_lo, pad_lo, pad_total - pad_lo)

    def forward(self, x: torch.Tensor, w: torch.Tensor, scale_w: torch.Tensor | None, update_emas: bool = False):
        if update_emas:
            magnitude = x.detach().float().square().mean()
            self.magnitude_ema.copy_(magnitude.lerp(self.magnitude_ema, self.magnitude_ema_beta))
        styles = self.affine(w)
        if scale_w is not None:
            styles = styles + self.scale_affine(scale_w)
        if self.is_torgb:
            styles = styles / math.sqrt(self.spec.in_channels * self.conv_kernel**2)
        x = modulated_conv2d(x, self.weight, styles, demodulate=not self.is_torgb, padding=self.conv_kernel - 1,
                             input_gain=self.magnitude_ema.rsqrt(), bias=self.bias)
        gain, slope = (1.0, 1.0) if self.is_torgb else (math.sqrt(2), 0.2)
        return filtered_lrelu(x, self.up_filter, self.down_filter, None, self.up_factor, self.down_factor,
                              self.padding, gain=gain, slope=slope, clamp=self.conv_clamp)


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] and T [N, 3, 3] -> images [N, C, canvas*r, canvas*r]."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        first, self.specs = synthesis_schedule(cfg)
        self.input = SynthesisInput(cfg.w_dim, margin=cfg.margin_size, **first)
        self.layer_names = [s.name for s in self.specs]
        for spec in self.specs:
            setattr(self, spec.name, SynthesisLayer(spec, cfg))
        if cfg.scale_norm != "none":
            self.scale_mapping = MappingNetwork(1, cfg.scale_dim, cfg.num_ws, cfg.mapping_layers)

    def normalized_scale(self, scale: torch.Tensor) -> torch.Tensor:
        """The scale-mapping input [N, 1] for patch scales s [N]."""
        cfg = self.cfg
        if cfg.scale_norm == "log":
            u = torch.log(scale) / math.log(cfg.scale_max)
        elif cfg.scale_norm == "anyres-positive":
            u = (scale - cfg.scale_min) / (cfg.scale_max - cfg.scale_min) + 0.1
        else:
            u = 2 * (scale - cfg.scale_min) / (cfg.scale_max - cfg.scale_min) - 1
        return u.view(-1, 1)

    def forward(
        self, ws: torch.Tensor, transform: torch.Tensor | None = None, canvas: int = 1, update_emas: bool = False
    ) -> torch.Tensor:
        n = ws.shape[0]
        if transform is None:
            transform = torch.eye(3, device=ws.device).expand(n, 3, 3)
        transform = transform.to(ws.device, torch.float32)
        if transform.shape != (n, 3, 3):
            raise ValueError(f"transform must be [N, 3, 3] with N = {n}, got {list(transform.shape)}")
        scale_ws = [None] * self.cfg.num_ws
        if self.cfg.scale_norm != "none":
            u = self.normalized_scale(scale_of(transform))
            # AnyRes normalises the 1-d scale input like z (2nd moment), which maps every value to
            # about +-1; reproduced exactly for imported AnyRes/UnitedHuman checkpoints.
            anyres = self.cfg.scale_norm.startswith("anyres")
            scale_ws = self.scale_mapping(u, normalize_input=anyres).unbind(dim=1)
        ws_list = ws.float().unbind(dim=1)
        x = self.input(ws_list[0], transform, canvas)
        for name, w, sw in zip(self.layer_names, ws_list[1:], scale_ws[1:], strict=True):
            x = getattr(self, name)(x, w, sw, update_emas=update_emas)
        return x * self.cfg.output_scale


class Generator(nn.Module):
    """z -> ws -> image of the patch T (see the module docstring)."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        self.synthesis = SynthesisNetwork(cfg)
        self.mapping = MappingNetwork(cfg.z_dim, cfg.w_dim, cfg.num_ws, cfg.mapping_layers)

    @property
    def img_resolution(self) -> int:
        return self.cfg.img_resolution

    @property
    def z_dim(self) -> int:
        return self.cfg.z_dim

    def forward(
        self,
        z: torch.Tensor,
        transform: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
    ) -> torch.Tensor:
        # G(z, T) of Eq. 3: the patch T(v, s) of the person drawn from z
        ws = self.mapping(z, truncation_psi, truncation_cutoff, update_emas=update_emas)
        return self.synthesis(ws, transform, update_emas=update_emas)


def patch_transforms(centers, scales, device=None) -> torch.Tensor:
    """T(v,s) of Eq. 4 for a batch: centers [N, 2] in [0,1]^2 and scales [N] (or one scale) ->
    float32 [N, 3, 3], each the transform of a `uh_train.format.geometry.PatchView`."""
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    scales = np.broadcast_to(np.asarray(scales, dtype=np.float64), [len(centers)])
    t = np.stack([PatchView(c, s).transform() for c, s in zip(centers, scales, strict=True)])
    return torch.as_tensor(t, dtype=torch.float32, device=device)

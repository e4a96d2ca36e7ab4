"""Reference operations of the networks, in plain PyTorch (no compiled extensions).

All filters are separable 1-D low-pass filters, applied along x and then y. Shapes use
N (batch), C (channels), H, W (height, width).

* `lowpass_filter(numtaps, cutoff, width, fs)` -- windowed-sinc (Kaiser) FIR design by
  `scipy.signal.firwin`, as StyleGAN3.
* `upfirdn2d(x, f, up, down, padding, gain)` -- zero-insertion upsampling, padding (negative
  values crop), FIR filtering and decimation.
* `filtered_lrelu(x, fu, fd, bias, up, down, padding, gain, slope, clamp)` -- the alias-suppressed
  nonlinearity of StyleGAN3: bias -> upsample -> leaky ReLU -> downsample.
* `modulated_conv2d(x, weight, styles, demodulate, padding, input_gain)` -- per-sample
  weight modulation, executed as one grouped convolution or as a convolution shared by the batch
  between input and output scalings, whichever is faster for the channel counts.
* `FullyConnected` -- linear layer with equalised learning rate.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.signal
import torch
import torch.nn.functional as F
from torch import nn


def lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float) -> torch.Tensor | None:
    """Kaiser-windowed sinc low-pass filter [numtaps] (float32, unit DC gain), or None for numtaps == 1.

    `scipy.signal.firwin(numtaps, cutoff, width=width, fs=fs)`, as StyleGAN3 designs its separable
    filters: cutoff and width (the transition band, which sets the Kaiser window's beta) are in the
    units of the sampling rate fs."""
    if numtaps == 1:
        return None
    return torch.as_tensor(scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs), dtype=torch.float32)


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int = 1,
    down: int = 1,
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample by `up` (zero insertion), pad by (x_lo, x_hi, y_lo, y_hi) in the upsampled grid
    (negative crops), convolve with the separable filter f [taps] scaled to total gain `gain`,
    keep every `down`-th sample. x: [N, C, H, W].

    With up > 1 the zero insertion and convolution run as one transposed convolution (the
    polyphase form: no multiplications by the inserted zeros), followed by the padding window."""
    if f is not None and up > 1:
        g = (f * math.sqrt(gain)).to(x.dtype)
        px0, px1, py0, py1 = padding
        x = _upsample_1d(x, g, up, 3, px0, px1)
        x = _upsample_1d(x, g, up, 2, py0, py1)
        return x[:, :, ::down, ::down] if down > 1 else x
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    px0, px1, py0, py1 = padding
    if max(padding) > 0:
        x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    if min(padding) < 0:
        x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    if f is None:
        return x[:, :, ::down, ::down] * gain if gain != 1 else x[:, :, ::down, ::down]
    taps = f.shape[0]
    # conv2d correlates; flipping makes it a convolution (a no-op for our symmetric filters).
    f = (f.flip(0) * math.sqrt(gain)).to(x.dtype)
    c = x.shape[1]
    x = F.conv2d(x, f.view(1, 1, 1, taps).expand(c, 1, 1, taps), stride=(1, down), groups=c)
    x = F.conv2d(x, f.view(1, 1, taps, 1).expand(c, 1, taps, 1), stride=(down, 1), groups=c)
    return x


def _upsample_1d(x: torch.Tensor, g: torch.Tensor, up: int, dim: int, pad_lo: int, pad_hi: int) -> torch.Tensor:
    """Zero-insert by `up` along dim (2 = y, 3 = x), pad, and convolve with g, as upfirdn2d does.

    The transposed convolution gives the full convolution c of the zero-inserted signal; the
    padded valid convolution is the window of c starting at taps - 1 - pad_lo. The transposed
    convolution's own padding drops the part of the crop that is the same at both ends (for the
    generator's layers, all of it), so that its output is the window itself, not a strided view
    that the next operation copies and whose gradient is a zero-filled tensor."""
    c, taps, length = x.shape[1], g.shape[0], x.shape[dim]
    shape = (c, 1, 1, taps) if dim == 3 else (c, 1, taps, 1)
    stride = (1, up) if dim == 3 else (up, 1)
    start, size = taps - 1 - pad_lo, length * up + pad_lo + pad_hi - taps + 1
    crop = max(min(start, (length - 1) * up + taps - start - size), 0)
    y = F.conv_transpose2d(x, g.view(shape[1:]).expand(shape), stride=stride,
                           padding=(0, crop) if dim == 3 else (crop, 0), groups=c)
    start -= crop
    if start == 0 and size == y.shape[dim]:
        return y
    before, after = max(-start, 0), max(start + size - y.shape[dim], 0)
    if before or after:
        y = F.pad(y, [before, after, 0, 0] if dim == 3 else [0, 0, before, after])
    return y.narrow(dim, start + before, size)


def filtered_lrelu(
    x: torch.Tensor,
    fu: torch.Tensor | None,
    fd: torch.Tensor | None,
    bias: torch.Tensor,
    up: int,
    down: int,
    padding: tuple[int, int, int, int],
    gain: float = math.sqrt(2),
    slope: float = 0.2,
    clamp: float | None = None,
    channels_last: bool | None = None,
) -> torch.Tensor:
    """Bias, upsample by `up` with fu, leaky ReLU (times gain, clamped to +-clamp), downsample by
    `down` with fd. With fu = fd = None and up = down = 1 it is a pointwise activation.

    bias may be None when the caller has added it already (`modulated_conv2d(bias=...)`). The
    gain (> 0) rides on the upsampling filter where there is one: the leaky ReLU is positively
    homogeneous, so lrelu(g·x) = g·lrelu(x), and the largest tensor of the layer is not scaled in a
    pass of its own. The clamp runs only when some value exceeds it (else it is the identity,
    forwards and backwards).

    `channels_last=None` runs the filters on channels-last tensors on a CPU, where oneDNN's
    depthwise filters are several times faster on them; the conversion is paid on the layer's
    input and output, a quarter of the upsampled size. The result is NCHW either way."""
    if bias is not None:
        x = x + bias.view(1, -1, 1, 1)
    if channels_last is None:
        channels_last = x.device.type == "cpu"
    channels_last = channels_last and fu is not None and up > 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if fu is not None and up > 1 and gain > 0:
        x = upfirdn2d(x, fu, up=up, padding=padding, gain=up**2 * gain)
        # In place: the upsampled tensor is fresh, and the transposed convolution's backward needs
        # its input, not its output.
        x = F.leaky_relu(x, slope, inplace=True) if slope != 1 else x
    else:
        x = upfirdn2d(x, fu, up=up, padding=padding, gain=up**2)
        x = F.leaky_relu(x, slope) * gain if slope != 1 else x * gain
    if clamp is not None and _exceeds(x, clamp):
        x = x.clamp(-clamp, clamp)
    x = upfirdn2d(x, fd, down=down)
    return x.contiguous() if channels_last else x


def _exceeds(x: torch.Tensor, clamp: float) -> bool:
    """Whether any value of x lies outside [-clamp, clamp] (always True while torch.compile traces,
    which cannot branch on values)."""
    if torch.compiler.is_compiling():
        return True
    x = x.detach()
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        x = x.permute(0, 2, 3, 1)  # contiguous: aminmax reads it in place instead of copying it
    lo, hi = torch.aminmax(x)
    return bool(lo < -clamp) or bool(hi > clamp)


def grouped_is_faster(device: torch.device, in_channels: int, out_channels: int) -> bool:
    """Whether `modulated_conv2d` runs as one grouped convolution (else as a shared one): on a CPU
    only when both channel counts are multiples of 8 (`just bench generator_ops`)."""
    return device.type != "cpu" or (in_channels % 8 == 0 and out_channels % 8 == 0)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    padding: int = 0,
    input_gain: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    fused: bool | None = None,
) -> torch.Tensor:
    """Convolve each sample of x [N, I, H, W] with weight [O, I, k, k] modulated by its styles
    [N, I]; demodulation rescales each output channel to unit expected magnitude; bias [O] is added
    by the convolution itself. Every step is per sample, so a sample's output does not depend on
    the rest of the batch.

    Two equal ways to run it: one grouped convolution with a weight per sample (`fused`), or the
    styles applied to the input, one convolution shared by the batch, the demodulation applied to
    the output. `fused=None` picks the faster: on a CPU (oneDNN) the grouped convolution is the
    faster when I and O are multiples of 8 and about half as fast otherwise; elsewhere grouped."""
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    if fused is None:
        fused = grouped_is_faster(x.device, in_ch, out_ch)
    if demodulate:
        # Pre-normalising keeps the products in range; demodulation cancels these factors.
        weight = weight * weight.square().mean(dim=[1, 2, 3], keepdim=True).rsqrt()
        styles = styles * styles.square().mean(dim=1, keepdim=True).rsqrt()
    w = weight.unsqueeze(0) * styles.view(n, 1, in_ch, 1, 1)  # [N, O, I, k, k]
    if not fused:
        scale = styles
        if input_gain is not None:
            scale = scale * (input_gain.reshape(-1, in_ch) if input_gain.ndim else input_gain)
        x = x * scale.view(n, in_ch, 1, 1).to(x.dtype)
        b = bias.to(x.dtype) if bias is not None else None
        if not demodulate:
            return F.conv2d(x, weight.to(x.dtype), b, padding=padding)
        x = F.conv2d(x, weight.to(x.dtype), padding=padding)
        d = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().view(n, out_ch, 1, 1).to(x.dtype)
        return torch.addcmul(b.view(1, -1, 1, 1), x, d) if b is not None else x * d
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    if input_gain is not None:
        w = w * input_gain.view(-1, 1, in_ch, 1, 1) if input_gain.ndim else w * input_gain
    x = x.reshape(1, n * in_ch, *x.shape[2:])
    b = bias.to(x.dtype).repeat(n) if bias is not None else None
    x = F.conv2d(x, w.reshape(n * out_ch, in_ch, kh, kw).to(x.dtype), b, padding=padding, groups=n)
    return x.reshape(n, out_ch, *x.shape[2:])


class FullyConnected(nn.Module):
    """y = act(x @ (weight * lr / sqrt(in)).T + bias * lr). Parameters are stored before their
    runtime gains (equalised learning rate), as in StyleGAN snapshots."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        weight_init: float = 1.0,
        bias_init: float | list[float] = 0.0,
    ):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * (weight_init / lr_multiplier))
        bias = torch.as_tensor(np.broadcast_to(np.asarray(bias_init, dtype=np.float32), [out_features]).copy())
        self.bias = nn.Parameter(bias / lr_multiplier)
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.addmm(self.bias * self.bias_gain, x, (self.weight * self.weight_gain).t())
        if self.activation == "lrelu":
            x = F.leaky_relu(x, 0.2) * math.sqrt(2)
        return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()

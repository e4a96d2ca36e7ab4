"""U-Net discriminator (paper §3.2, after U-Net GAN): a StyleGAN2-style residual encoder that ends in
minibatch standard deviation and one global logit, and a decoder with skip connections from the
encoder that gives one logit per input pixel.

`Discriminator(cfg).forward(img [N, C, r, r]) -> (global_logits [N, 1], pixel_logits [N, 1, r, r])`.

The global head depends on the batch (minibatch standard deviation over groups of up to 4 samples);
the per-pixel head does not (the decoder starts from the encoder's 4x4 features before that layer).
`forward(img, chunks=k)` runs k equal batches (reals, fakes, CutMix images) in one pass with the
minibatch statistics taken within each chunk, so each chunk's logits equal those of its own pass.
Channels at resolution `res` are `min(channel_base // res, channel_max)` for encoder and decoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .ops import FullyConnected, upfirdn2d

_BLUR = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8.0  # separable [1,3,3,1] resampling filter


@dataclass(frozen=True)
class DiscriminatorConfig:
    img_resolution: int = 256
    img_channels: int = 3
    channel_base: int = 32768
    channel_max: int = 512
    mbstd_group_size: int = 4
    mbstd_channels: int = 1


def discriminator_channels(cfg: DiscriminatorConfig) -> dict[int, int]:
    """Channels of the feature maps at each resolution r, r/2, ..., 4."""
    res_log2 = int(math.log2(cfg.img_resolution))
    return {2**i: min(cfg.channel_base // 2**i, cfg.channel_max) for i in range(res_log2, 1, -1)}


def downsample2d(x: torch.Tensor) -> torch.Tensor:
    return upfirdn2d(x, _BLUR.to(x.device), down=2, padding=(1, 1, 1, 1))


def upsample2d(x: torch.Tensor) -> torch.Tensor:
    return upfirdn2d(x, _BLUR.to(x.device), up=2, padding=(2, 1, 2, 1), gain=4)


class Conv2d(nn.Module):
    """k x k convolution with equalised learning rate, optional leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, activation: str = "lrelu"):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel * kernel)
        self.activation = activation

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        # lrelu(x)·√2·gain = lrelu(x·√2·gain) for gain > 0: the gains ride on the weights and the
        # bias instead of costing a pass over the output each.
        g = gain * (math.sqrt(2) if self.activation == "lrelu" else 1.0)
        bias = self.bias * g if self.bias is not None and g != 1 else self.bias
        x = F.conv2d(x, self.weight * (self.weight_gain * g), bias, padding=self.weight.shape[-1] // 2)
        return F.leaky_relu(x, 0.2) if self.activation == "lrelu" else x


class EncoderBlock(nn.Module):
    """Residual block: two 3x3 convs, the second followed by 2x downsampling; 1x1 skip."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = Conv2d(in_channels, in_channels, 3)
        self.conv1 = Conv2d(in_channels, out_channels, 3)
        self.skip = Conv2d(in_channels, out_channels, 1, bias=False, activation="linear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.skip(downsample2d(x), gain=math.sqrt(0.5))
        x = downsample2d(self.conv1(self.conv0(x), gain=math.sqrt(0.5)))  # the blur is linear
        return x + y


class DecoderBlock(nn.Module):
    """2x upsampling, concatenation with the encoder features of that resolution, one 3x3 conv;
    1x1 skip from the upsampled input."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv = Conv2d(in_channels + skip_channels, out_channels, 3)
        self.skip = Conv2d(in_channels, out_channels, 1, bias=False, activation="linear")

    def forward(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        x = upsample2d(x)
        return self.conv(torch.cat([x, features], dim=1), gain=math.sqrt(0.5)) + self.skip(x, gain=math.sqrt(0.5))


class MinibatchStd(nn.Module):
    """Appends the standard deviation of features across groups of samples (StyleGAN2)."""

    def __init__(self, group_size: int, num_channels: int):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = max(d for d in range(1, min(self.group_size, n) + 1) if n % d == 0)
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1)
        return torch.cat([x, y.repeat(g, 1, h, w)], dim=1)


class Discriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        self.cfg = cfg
        ch = discriminator_channels(cfg)
        self.resolutions = [res for res in ch if res > 4]  # encoder blocks, r .. 8
        r = cfg.img_resolution
        self.fromrgb = Conv2d(cfg.img_channels, ch[r], 1)
        self.encoder = nn.ModuleDict({f"b{res}": EncoderBlock(ch[res], ch[res // 2]) for res in self.resolutions})
        self.mbstd = MinibatchStd(cfg.mbstd_group_size, cfg.mbstd_channels)
        self.epilogue_conv = Conv2d(ch[4] + cfg.mbstd_channels, ch[4], 3)
        self.epilogue_fc = FullyConnected(ch[4] * 16, ch[4], activation="lrelu")
        self.epilogue_out = FullyConnected(ch[4], 1)
        self.decoder = nn.ModuleDict(
            {f"d{res}": DecoderBlock(ch[res // 2], ch[res], ch[res])
             for res in reversed(self.resolutions)}
        )
        self.pixel_out = Conv2d(ch[r], 1, 1, activation="linear")

    def forward(self, img: torch.Tensor, chunks: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        if img.shape[0] % chunks:
            raise ValueError(f"a batch of {img.shape[0]} images does not split into {chunks} equal chunks")
        x = self.fromrgb(img)
        features = {}
        for res in self.resolutions:
            features[res] = x
            x = self.encoder[f"b{res}"](x)
        bottleneck = x  # [N, ch[4], 4, 4]
        # Minibatch statistics within each chunk only: one pass over reals and fakes together must
        # not let a real's global logit see the fakes.
        y = self.epilogue_conv(torch.cat([self.mbstd(c) for c in x.chunk(chunks)]) if chunks > 1 else self.mbstd(x))
        global_logits = self.epilogue_out(self.epilogue_fc(y.flatten(1)))
        x = bottleneck
        for res in reversed(self.resolutions):
            x = self.decoder[f"d{res}"](x, features[res])
        return global_logits, self.pixel_out(x)

"""The lesion segmenter's network and loss (torch imported lazily: importing this module needs no torch)."""

from __future__ import annotations

# BCE weight of lesion pixels: lesions cover ~1% of a slice, and unweighted BCE drives every logit so
# far negative that the Dice term's gradient vanishes through the sigmoid (seen: segmenters that never
# predict a lesion in one seed out of three)
LESION_WEIGHT = 10.0
GROUPS = 4  # GroupNorm groups: widths are multiples of 4 (validated in the config)


def segmentation_unet(in_channels: int, widths):
    """A UNet of one ResBlock (model/blocks) per level: `in_channels` image channels in, one lesion logit
    per pixel out, (N, H, W). Any H, W: sizes not divisible by 2^(levels-1) are padded with background."""
    import torch
    from torch import nn

    from ..model.blocks import Downsample, ResBlock, Upsample

    widths = [int(w) for w in widths]

    class SegmentationUNet(nn.Module):
        """The ResBlocks get no condition: their scale-shift reduces to a learned per-channel affine (the
        projection's bias of a zero input)."""

        def __init__(self):
            super().__init__()
            self.levels = len(widths)
            self.register_buffer("no_condition", torch.zeros(1, 1))
            self.input_conv = nn.Conv2d(in_channels, widths[0], 3, padding=1)
            self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
            ch = widths[0]
            for i, w in enumerate(widths):
                self.down.append(ResBlock(ch, w, 1, GROUPS, 0.0, norm2=False))
                ch = w
                if i < len(widths) - 1:
                    self.downsample.append(Downsample(ch))
            self.mid = ResBlock(ch, ch, 1, GROUPS, 0.0, norm2=False)
            self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
            for i in reversed(range(len(widths))):
                self.up.append(ResBlock(ch + widths[i], widths[i], 1, GROUPS, 0.0, norm2=False))
                ch = widths[i]
                if i > 0:
                    self.upsample.append(Upsample(ch, "bilinear"))
            self.out = nn.Sequential(nn.GroupNorm(GROUPS, ch), nn.SiLU(), nn.Conv2d(ch, 1, 3, padding=1))
            self.to(memory_format=torch.channels_last)  # mkldnn convolutions: ~20% faster steps on CPU

        def forward(self, x):
            h, w = x.shape[-2:]
            m = 2 ** (self.levels - 1)
            pad_h, pad_w = (-h) % m, (-w) % m
            if pad_h or pad_w:
                x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), value=-1.0)
            x = x.contiguous(memory_format=torch.channels_last)
            emb = self.no_condition
            hid = self.input_conv(x)
            skips = []
            for i, block in enumerate(self.down):
                hid = block(hid, emb)
                skips.append(hid)
                if i < len(self.downsample):
                    hid = self.downsample[i](hid)
            hid = self.mid(hid, emb)
            for i, block in enumerate(self.up):
                hid = block(torch.cat([hid, skips.pop()], dim=1), emb)
                if i < len(self.upsample):
                    hid = self.upsample[i](hid)
            return self.out(hid)[:, 0, :h, :w]

    return SegmentationUNet()


def dice_bce_loss(logits, target, lesion_weight: float = 1.0):
    """BCE per pixel (lesion pixels weighted by `lesion_weight`) + soft Dice pooled over the batch
    (pooling keeps lesion-free slices meaningful)."""
    import torch
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(lesion_weight))
    p = logits.sigmoid()
    soft_dice = (2 * (p * target).sum() + 1.0) / (p.sum() + target.sum() + 1.0)
    return bce + (1.0 - soft_dice)

"""The conditional 28x28 eps-model of Problem 1 (the public "conditional diffusion MNIST" design).

forward(x [B,3,28,28], c [B] int64 class, t [B] float t/T, mask [B] float: 1 = class dropped).
Attribute names follow that design so its checkpoints load unchanged.
"""
import torch
from torch import nn
from torch.nn import functional as F


class ResidualConvBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, is_res: bool = False):
        super().__init__()
        self.same_channels = in_ch == out_ch
        self.is_res = is_res
        self.conv1 = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, 1, 1), nn.BatchNorm2d(out_ch), nn.GELU())
        self.conv2 = nn.Sequential(nn.Conv2d(out_ch, out_ch, 3, 1, 1), nn.BatchNorm2d(out_ch), nn.GELU())

    def forward(self, x):
        x1 = self.conv1(x)
        x2 = self.conv2(x1)
        if not self.is_res:
            return x2
        return ((x if self.same_channels else x1) + x2) / 1.414


class UnetDown(nn.Module):
    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.model = nn.Sequential(ResidualConvBlock(in_ch, out_ch), nn.MaxPool2d(2))

    def forward(self, x):
        return self.model(x)


class UnetUp(nn.Module):
    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.model = nn.Sequential(
            nn.ConvTranspose2d(in_ch, out_ch, 2, 2), ResidualConvBlock(out_ch, out_ch),
            ResidualConvBlock(out_ch, out_ch)
        )

    def forward(self, x, skip):
        return self.model(torch.cat([x, skip], dim=1))


class EmbedFC(nn.Module):
    def __init__(self, in_dim, emb_dim):
        super().__init__()
        self.in_dim = in_dim
        self.layers = nn.Sequential(nn.Linear(in_dim, emb_dim), nn.GELU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, x):
        return self.layers(x.reshape(-1, self.in_dim))


class DigitUNet(nn.Module):
    def __init__(self, n_feat: int = 128, n_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.config = {"n_feat": n_feat, "n_classes": n_classes, "in_channels": in_channels}
        self.n_feat, self.n_classes = n_feat, n_classes
        self.init_conv = ResidualConvBlock(in_channels, n_feat, is_res=True)
        self.down1 = UnetDown(n_feat, n_feat)
        self.down2 = UnetDown(n_feat, 2 * n_feat)
        self.to_vec = nn.Sequential(nn.AvgPool2d(7), nn.GELU())
        self.timeembed1 = EmbedFC(1, 2 * n_feat)
        self.timeembed2 = EmbedFC(1, n_feat)
        self.contextembed1 = EmbedFC(n_classes, 2 * n_feat)
        self.contextembed2 = EmbedFC(n_classes, n_feat)
        self.up0 = nn.Sequential(nn.ConvTranspose2d(2 * n_feat, 2 * n_feat, 7, 7),
                                 nn.GroupNorm(8, 2 * n_feat), nn.ReLU())
        self.up1 = UnetUp(4 * n_feat, n_feat)
        self.up2 = UnetUp(2 * n_feat, n_feat)
        self.out = nn.Sequential(
            nn.Conv2d(2 * n_feat, n_feat, 3, 1, 1), nn.GroupNorm(8, n_feat), nn.ReLU(),
            nn.Conv2d(n_feat, in_channels, 3, 1, 1)
        )

    def forward(self, x, c, t, mask):
        x = self.init_conv(x)
        down1 = self.down1(x)
        down2 = self.down2(down1)
        hidden = self.to_vec(down2)
        # The design multiplies the one-hot by -(1 - mask): conditional rows carry a *negated* one-hot,
        # dropped rows zeros. Trained checkpoints depend on that sign, so it is kept.
        onehot = F.one_hot(c.long(), self.n_classes).to(x.dtype) * (mask.to(x.dtype)[:, None] - 1)
        cemb1 = self.contextembed1(onehot).reshape(-1, 2 * self.n_feat, 1, 1)
        temb1 = self.timeembed1(t.to(x.dtype)).reshape(-1, 2 * self.n_feat, 1, 1)
        cemb2 = self.contextembed2(onehot).reshape(-1, self.n_feat, 1, 1)
        temb2 = self.timeembed2(t.to(x.dtype)).reshape(-1, self.n_feat, 1, 1)
        up1 = self.up0(hidden)
        up2 = self.up1(cemb1 * up1 + temb1, down2)
        up3 = self.up2(cemb2 * up2 + temb2, down1)
        return self.out(torch.cat([up3, x], dim=1))

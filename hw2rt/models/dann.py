"""DANN networks of Problem 3, layer for layer as the seed report lists them.

Inputs are RGB images in [0, 1] (grayscale repeated to 3 channels), normalised inside with
mean 0.5 / std 0.5 so that every image classifier in hw2rt shares one input contract.
"""
import copy

import torch
from torch import nn


class FeatureExtractor(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, 64, 5), nn.BatchNorm2d(64), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(64, 64, 5), nn.BatchNorm2d(64), nn.Dropout2d(), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(64, 128, 3),
        )

    def forward(self, x):
        return self.conv((x - 0.5) / 0.5).flatten(1)  # [B, 512]


class LabelClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(512, 100), nn.BatchNorm1d(100), nn.ReLU(), nn.Dropout(),
            nn.Linear(100, 100), nn.BatchNorm1d(100), nn.ReLU(),
            nn.Linear(100, 10), nn.LogSoftmax(dim=1),
        )

    def forward(self, f):
        return self.layers(f)


class DomainClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(512, 100), nn.BatchNorm1d(100), nn.ReLU(), nn.Linear(100, 2),
                                    nn.LogSoftmax(dim=1))

    def forward(self, f):
        return self.layers(f)


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam):
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.lam * grad, None


def grad_reverse(x, lam: float = 1.0):
    """Identity forward; gradient multiplied by -lam backward."""
    return _ReverseGrad.apply(x, lam)


def grl_lambda(progress: float) -> float:
    """The usual schedule 2/(1+exp(-10p)) - 1 for training progress p in [0, 1]."""
    return 2.0 / (1.0 + torch.exp(torch.tensor(-10.0 * progress)).item()) - 1.0


class DANN(nn.Module):
    """The training-time network: features -> (class log-probs, domain log-probs through the GRL)."""

    def __init__(self):
        super().__init__()
        self.feature = FeatureExtractor()
        self.label_classifier = LabelClassifier()
        self.domain_classifier = DomainClassifier()

    def forward(self, x, lam: float = 1.0):
        f = self.feature(x)
        return self.label_classifier(f), self.domain_classifier(grad_reverse(f, lam))


class DANNClassifier(nn.Module):
    """What gets exported: image -> (class log-probabilities [B,10], features [B,512])."""

    def __init__(self):
        super().__init__()
        self.config = {}
        self.feature = FeatureExtractor()
        self.label_classifier = LabelClassifier()

    def forward(self, x):
        f = self.feature(x)
        return self.label_classifier(f), f


def with_batchnorm_statistics(net: nn.Module, images_u8: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """A copy of `net` (DANN or DANNClassifier) whose BatchNorm running statistics are recomputed on
    `images_u8` (uint8 [N,3,28,28], e.g. one domain's unlabelled training images; AdaBN): a
    cumulative average over train-mode forward passes with dropout off. The weights are unchanged."""
    net = copy.deepcopy(net).train()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        elif isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    with torch.no_grad():
        for i in range(0, len(images_u8), batch_size):
            chunk = images_u8[i:i + batch_size]
            if len(chunk) > 1:  # BatchNorm1d needs two samples in train mode
                net.label_classifier(net.feature(chunk.float() / 255.0))
    return net.eval()

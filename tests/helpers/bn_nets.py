"""A small CNN with BatchNorm and dropout whose train and eval modes give different outputs (running
statistics set far from any batch's), wrapped as a scorable ``Model``: for the eval-mode tests."""

from __future__ import annotations

import torch
from torch import nn

from kdata.models.base import Model


def bn_net(seed: int, num_classes: int) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
    with torch.no_grad():  # running statistics far from any batch's: train and eval mode differ
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    return net


def bn_model(net: nn.Module, name: str, class_names: list[str]) -> Model:
    return Model(spec=f"test:{name}", module=net, input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.5,) * 3,
                 class_names=list(class_names), checksum=f"test:{name}:bn")

"""The weights a training run ends with: the best on the eval set so far (``Best``), or fresh ones (``reinit_``)."""

from __future__ import annotations

import torch


def reinit_(module: torch.nn.Module) -> int:
    """Reset every layer's parameters (``--reinit``: train from scratch); returns how many layers were
    reset. An exported program or TorchScript module has none to reset: its layers' initialisers are
    not part of the file."""
    reset = 0
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()
            reset += 1
    return reset


def cpu_state(module: torch.nn.Module) -> dict:
    """A copy of ``module``'s parameters and buffers on the CPU (kept while training goes on)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


class Best:
    """The weights that scored best on the eval set so far, the starting weights included (epoch 0):
    the image trainer's accuracy, the text trainer's accuracy or perplexity (``lower_is_better``).

    A copy lives on the CPU, so keeping it costs no accelerator memory while training goes on; ties keep
    the earlier weights, so an epoch must beat the start to be kept. ``history``: every (epoch, score)
    offered. Selecting on the eval set makes its score an optimistic estimate for that set.
    """

    def __init__(self, net: torch.nn.Module, score: float, *, lower_is_better: bool = False):
        self.epoch, self.value, self.lower, self.history = 0, score, lower_is_better, []
        self.state = cpu_state(net)

    def offer(self, net: torch.nn.Module, *, epoch: int, value: float) -> None:
        self.history.append((epoch, value))
        if (value < self.value) if self.lower else (value > self.value):
            self.epoch, self.value, self.state = epoch, value, cpu_state(net)

    def restore(self, net: torch.nn.Module) -> float:
        """Load the best weights into ``net``; their score."""
        net.load_state_dict(self.state)
        return self.value

    def kept(self, net: torch.nn.Module, *, epochs: int, accuracy_last: float, where: str) -> dict:
        """``restore`` unless the last epoch's weights are the best; what was kept, and why, for the log."""
        if self.epoch == epochs:
            return {"epoch": epochs, "accuracy": accuracy_last,
                    "note": f"kept the last epoch's weights: the best on {where}"}
        self.restore(net)
        if self.epoch == 0:
            note = (f"kept the starting weights ({self.value:.4f}): no epoch beat them on {where} "
                    f"(last epoch {accuracy_last:.4f})")
        else:
            note = (f"kept epoch {self.epoch}'s weights, the best on {where} ({self.value:.4f}; "
                    f"last epoch {accuracy_last:.4f})")
        return {"epoch": self.epoch, "accuracy": self.value, "note": note}

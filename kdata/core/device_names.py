"""Device names kdata accepts (``--device``), checked without importing torch, so option checks run
where torch is not loaded yet (``kdata train --help`` builds a ``TrainConfig`` for its defaults)."""

from __future__ import annotations

from kdata.core.errors import KdataError

DEVICES = "auto, cpu, cuda or cuda:N"


def check_device_name(device) -> str:
    """``device`` as a string when it names a device kdata knows (``DEVICES``), whether or not one is
    present here; one line otherwise."""
    device = str(device)
    kind, colon, index = device.partition(":")
    if device not in ("auto", "cpu") and (kind != "cuda" or (colon and not (index.isascii() and index.isdigit()))):
        raise KdataError(f"--device '{device}': unknown device ({DEVICES})")
    return device

"""The data sets on disk: MNIST and Fashion-MNIST's IDX files, read through torchvision.

``load_split`` gives one split as uint8 tensors; ``to_float_images`` turns them into the float
images every model sees. The files are checked first (``idx_files``, no torch), and a missing
file is downloaded with a timeout or reported in one line that says where to put it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torchvision

from vaelab.idx_files import DataNotFoundError, check_split_files, files_present, missing_message

DATASETS = {
    "mnist": torchvision.datasets.MNIST,
    "fashion_mnist": torchvision.datasets.FashionMNIST,
}
DOWNLOAD_TIMEOUT_S = 20.0


def load_split(name: str, root: str | os.PathLike, train: bool, download: bool = True):
    """Read one split with torchvision. Returns (images uint8 (N, 28, 28), labels int64 (N,), classes).

    Raises DataNotFoundError with instructions when the files are missing and the
    download is off or fails.
    """
    cls = DATASETS[name]
    root = str(Path(root).expanduser())
    if files_present(name, root):
        check_split_files(name, root, train)
    try:
        dataset = cls(root, train=train, download=False)
    except RuntimeError as missing:
        if not download:
            raise DataNotFoundError(missing_message(name, root, "download is off (data.download=false)")) from missing
        dataset = _download(cls, name, root, train)
    labels, classes = dataset.targets.long(), list(dataset.classes)
    return dataset.data, labels, classes


def _download(cls, name: str, root: str, train: bool):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # never hang on a network that drops packets
    try:
        return cls(root, train=train, download=True)
    except Exception as failure:  # noqa: BLE001 - any download failure gets the same advice
        lines = [line.strip() for line in str(failure).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(failure).__name__  # the last line holds the cause
        raise DataNotFoundError(missing_message(name, root, f"the download failed: {reason}")) from failure
    finally:
        socket.setdefaulttimeout(previous)


def to_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) in [0, 1]."""
    return images.unsqueeze(1).float().div_(255.0)

"""The data sets on disk, read through torchvision as uint8 tensors.

- ``load_split``: MNIST and Fashion-MNIST's IDX files, checked first (``idx_files``, no torch); a
  missing file is downloaded with a timeout or reported in one line that says where to put it.
- ``load_torchvision``: any class of ``torchvision.datasets`` with a ``train=`` or ``split=``
  argument that yields (image, label), e.g. KMNIST or CIFAR10 (``data=torchvision``).
- ``resize_images``: a whole split resized and centre-cropped to ``data.image_size``.
- ``to_float_images``: uint8 to the float images in [0, 1] every model sees.

A folder of image files is ``image_folder``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import torch
import torchvision

from vaelab.errors import ConfigError, first_line
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
    """uint8 (N, C, H, W), or (N, H, W) for one channel -> float32 (N, C, H, W) in [0, 1]; float
    images (already in [0, 1]) are kept as they are."""
    images = images.unsqueeze(1) if images.dim() == 3 else images
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def torchvision_class(name: str):
    """The class of ``torchvision.datasets`` called ``name`` (or ``torchvision.datasets.<name>``).
    Nothing else is imported or called: ``data.name`` may come from a file of someone else's."""
    from torchvision.datasets import VisionDataset

    short = name.removeprefix("torchvision.datasets.")
    found = getattr(torchvision.datasets, short, None) if short.isidentifier() else None
    if not (isinstance(found, type) and issubclass(found, VisionDataset)):
        raise ConfigError(
            f"data.name={name!r} is not a data set class of torchvision.datasets (e.g. KMNIST, CIFAR10, SVHN)"
        )
    return found


def load_torchvision(name: str, root: str | os.PathLike, train: bool, download: bool = False):
    """One split of a ``torchvision.datasets`` class, with ``train=`` or ``split="train"|"test"``.
    Returns (images uint8 (N, C, H, W), labels int64 (N,), classes). The tensors its ``data``
    attribute holds are used as they are; other data sets are read image by image."""
    import inspect

    from torchvision.transforms.v2.functional import pil_to_tensor

    cls = torchvision_class(name)
    parameters = inspect.signature(cls).parameters
    if "train" in parameters:
        split = {"train": train}
    elif "split" in parameters:
        split = {"split": "train" if train else "test"}
    else:
        raise ConfigError(f"data.name={name}: vaelab reads data sets that take train= or split=")
    root = str(Path(root).expanduser())
    try:
        dataset = cls(root, download=download, **split)
    except (RuntimeError, FileNotFoundError) as missing:
        raise DataNotFoundError(
            f"data.name={name}: its {'training' if train else 'test'} files are not under {root} "
            f"({first_line(missing)}); put them there, or set data.download=true"
        ) from None
    data = getattr(dataset, "data", None)
    labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = getattr(dataset, "labels", None)
    if isinstance(data, torch.Tensor | np.ndarray) and labels is not None and data.ndim in (3, 4):
        images = torch.as_tensor(np.asarray(data) if isinstance(data, np.ndarray) else data)
        if images.dim() == 3:
            images = images.unsqueeze(1)
        elif images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):  # (N, H, W, C), as CIFAR keeps it
            images = images.permute(0, 3, 1, 2)
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    else:
        pairs = [(pil_to_tensor(image), int(label)) for image, label in dataset]
        images = torch.stack([image for image, _ in pairs])
        labels = torch.tensor([label for _, label in pairs], dtype=torch.int64)
    if images.dtype != torch.uint8:
        raise ConfigError(f"data.name={name}: its images are {images.dtype}, not 8-bit")
    classes = list(getattr(dataset, "classes", None) or [str(c) for c in sorted(set(labels.tolist()))])
    return images.contiguous(), labels, classes


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) with the shorter side resized to ``size`` and centre-cropped to (size, size)."""
    from torchvision.transforms.v2.functional import center_crop, resize

    if tuple(images.shape[-2:]) == (size, size):
        return images
    return center_crop(resize(images, size, antialias=True), [size, size])

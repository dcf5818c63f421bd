"""Images handed over from Python: a tensor, a NumPy array or a ``torch.utils.data.Dataset``.

``register(data, labels)`` turns them into uint8 or float32 (N, C, H, W) images and int64 (N,)
labels, keeps them in this process under a key (a hash of their bytes), and returns the key and
a one-line summary. The run's config records both (``data.source=tensors``, ``data.tensor_key``,
``data.tensor_summary``), never the images: a checkpoint trained on them says what it needs, and
``vaelab.evaluate(ckpt, data=...)`` hands them over again.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from vaelab.errors import ConfigError, DataNotFoundError

REGISTERED: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # key -> (images, labels), this process only


def as_images(data) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images (N, C, H, W) uint8 or float32 in [0, 1], labels (N,) int64 or None) from a tensor or
    array (N, C, H, W) or (N, H, W), or a Dataset of images or (image, label) pairs."""
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(np.ascontiguousarray(data))
    labels = None
    if isinstance(data, torch.utils.data.Dataset):
        items = [data[i] for i in range(len(data))]
        pairs = [item if isinstance(item, tuple | list) else (item, None) for item in items]
        data = torch.stack([torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x for x, _ in pairs])
        if all(y is not None for _, y in pairs):
            labels = torch.tensor([int(y) for _, y in pairs], dtype=torch.int64)
    if not isinstance(data, torch.Tensor):
        raise ConfigError(f"data: a tensor, a NumPy array or a torch Dataset, not {type(data).__name__}")
    images = data.detach().cpu()
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise ConfigError(f"data: images of shape (N, C, H, W) or (N, H, W) with C 1 or 3, got {tuple(data.shape)}")
    if images.dtype != torch.uint8:
        images = images.float()
        if not (images.min() >= 0 and images.max() <= 1):
            raise ConfigError("data: float images must lie in [0, 1] (or give uint8 images in 0..255)")
    return images.contiguous(), labels


def register(data, labels=None) -> tuple[str, str]:
    """Keep the images (and labels, else all 0) for this process: returns (key, summary)."""
    images, found = as_images(data)
    labels = found if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.int64).flatten()
    labels = torch.zeros(len(images), dtype=torch.int64) if labels is None else labels
    if len(labels) != len(images) or labels.min() < 0:
        raise ConfigError(f"labels: {len(images)} class numbers >= 0 for {len(images)} images, got {len(labels)}")
    digest = hashlib.blake2b(digest_size=8)
    for tensor in (images, labels):
        digest.update(f"{tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    key = digest.hexdigest()
    REGISTERED[key] = (images, labels)
    classes = int(labels.max()) + 1
    return key, f"{images.dtype} {tuple(images.shape)}, {classes} class{'es' if classes > 1 else ''}"


def registered(key: str | None, summary: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels registered under ``key``; a one-line error saying what to hand over
    when this process has none (a checkpoint of a run trained on tensors from Python)."""
    if key in REGISTERED:
        return REGISTERED[key]
    raise DataNotFoundError(
        f"this run was trained on images handed over from Python ({summary or 'not described'}, key {key}): "
        "pass the same ones again, e.g. vaelab.evaluate(ckpt, data=images, labels=labels)"
    )

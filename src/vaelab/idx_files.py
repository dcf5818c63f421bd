"""MNIST-format IDX files on disk: where torchvision expects them, and what a readable set is.

``check_data_files(data_cfg)`` runs before torch and Lightning are imported, so a missing,
truncated or mislabelled file fails a run in about a second with one line naming it. It reads
the headers and the label bytes only; torchvision decodes the images afterwards (``vaelab.data``).

Imports nothing heavy.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

from vaelab.errors import DataCorruptError, DataNotFoundError, UserError  # noqa: F401 - raised here, imported from here

FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # torchvision's class names
NUM_CLASSES = 10  # both data sets: digits 0-9, ten kinds of clothing
IDX_MAGIC = {"images": 2051, "labels": 2049}  # unsigned bytes, 3 or 1 dimensions
IMAGE_SIZE = (28, 28)  # the networks' input: MNIST's and Fashion-MNIST's
SPLIT_PREFIX = {True: "train", False: "t10k"}


def raw_folder(name: str, root: str | os.PathLike) -> Path:
    """Where torchvision expects the uncompressed IDX files, e.g. ``root/MNIST/raw``."""
    return Path(root).expanduser().resolve() / FOLDERS[name] / "raw"


def split_files(name: str, root: str | os.PathLike, train: bool) -> tuple[Path, Path]:
    """The (images, labels) IDX files of the train (60k) or test (10k) split."""
    folder, prefix = raw_folder(name, root), SPLIT_PREFIX[train]
    return folder / f"{prefix}-images-idx3-ubyte", folder / f"{prefix}-labels-idx1-ubyte"


def expected_files(name: str) -> list[str]:
    """The uncompressed IDX file names torchvision looks for."""
    return [path.name for train in (True, False) for path in split_files(name, ".", train)]


def missing_message(name: str, root: str | os.PathLike, why: str) -> str:
    return (
        f"{name} data not found in {raw_folder(name, root)} and {why}. "
        f"Put the uncompressed IDX files ({', '.join(expected_files(name))}) there, "
        f"or point data.root (or the VAELAB_DATA_DIR environment variable) at a folder "
        f"that holds {FOLDERS[name]}/raw/."
    )


def check_idx_file(path: Path, kind: str) -> tuple[tuple[int, ...], bytes]:
    """Check an uncompressed IDX file: a regular file (a FIFO would block), its magic number,
    its size against its header, at least one item, 28x28 images. Returns its shape and, for
    labels, the label bytes (b"" for images)."""
    magic = IDX_MAGIC[kind]
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataCorruptError(f"{path}: not a regular file (a FIFO or device)")
    with os.fdopen(fd, "rb") as handle:
        head = handle.read(4)
        found = int.from_bytes(head, "big") if len(head) == 4 else None
        if found != magic:
            raise DataCorruptError(
                f"{path}: not an uncompressed IDX {kind} file (magic number {found}, expected {magic})"
            )
        ndim = magic & 0xFF
        dims_bytes = handle.read(4 * ndim)
        if len(dims_bytes) < 4 * ndim:
            raise DataCorruptError(f"{path}: the IDX header is cut short")
        shape = tuple(int.from_bytes(dims_bytes[4 * i : 4 * i + 4], "big") for i in range(ndim))
        expected = 4 + 4 * ndim + math.prod(shape)
        size = os.fstat(handle.fileno()).st_size
        if size != expected:
            raise DataCorruptError(
                f"{path}: {size} bytes, but its header promises {expected} (shape {shape}): "
                "the file is truncated or corrupt; replace it"
            )
        if shape[0] == 0:
            raise DataCorruptError(f"{path}: its header says it holds 0 {kind}")
        if kind == "images" and shape[1:] != IMAGE_SIZE:
            raise DataCorruptError(f"{path}: images of {shape[1]}x{shape[2]} pixels, expected 28x28")
        return shape, handle.read() if kind == "labels" else b""


def check_split_files(name: str, root: str | os.PathLike, train: bool) -> None:
    """Check one split's image and label files, that they hold the same number of items, and
    that every label is a class (0..9)."""
    images, labels = split_files(name, root, train)
    (image_count, *_), _ = check_idx_file(images, "images")
    (label_count,), label_bytes = check_idx_file(labels, "labels")
    if image_count != label_count:
        raise DataCorruptError(f"{images} holds {image_count} images but {labels} holds {label_count} labels")
    if max(label_bytes) >= NUM_CLASSES:
        raise DataCorruptError(f"{labels}: a label is {max(label_bytes)}, outside 0..{NUM_CLASSES - 1}")


def files_present(name: str, root: str | os.PathLike) -> bool:
    folder = raw_folder(name, root)
    return all((folder / file).is_file() for file in expected_files(name))


def check_data_files(name: str, root: str | os.PathLike, download: bool) -> None:
    """Before anything heavy is imported: every IDX file of ``name`` under ``root`` readable,
    or absent with the download on (torchvision fetches them later)."""
    if files_present(name, root):
        for train in (True, False):
            check_split_files(name, root, train)
    elif not download:
        raise DataNotFoundError(missing_message(name, root, "download is off (data.download=false)"))

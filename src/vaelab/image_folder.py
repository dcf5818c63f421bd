"""A folder of PNG and JPEG images as one uint8 tensor, decoded once and cached beside the images.

Layout: ``<root>/<class>/<image>`` (labels from the sorted subfolder names) or ``<root>/<image>``
(one class). Each file is decoded by ``torchvision.io.decode_image``, given ``channels`` (1 grey
or 3 RGB; by default 3 when any file is in colour, else 1), resized so that its shorter side is
``image_size`` and centre-cropped to a square (torchvision's ``resize`` and ``center_crop``).
Without ``image_size`` every image must already have the same size.

A file that cannot be decoded is skipped and counted (``bad_files="skip"``) or refused with one
line naming it (``bad_files="error"``).

The decoded tensor is cached in ``<root>/.vaelab-cache/<key>.pt``, ``key`` a hash of the
settings and of every file's path and bytes: a second run reads one file instead of decoding
them all, and a changed, added or removed image makes a new key. The cache is read as data
(``weights_only``) and written atomically; a read-only folder is simply not cached.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from vaelab.errors import DataCorruptError, DataNotFoundError, first_line

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_DIR = ".vaelab-cache"
CACHE_FORMAT = 1  # bumped when what a cache file holds changes


@dataclass
class FolderImages:
    """The decoded folder: ``images`` uint8 (N, C, S, S), ``labels`` int64 (N,), ``classes`` the
    subfolder names (``["images"]`` without subfolders), ``files`` the N relative paths, in order,
    and ``skipped`` the files that could not be decoded."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    files: list[str]
    skipped: list[str]


def list_images(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Every image file under ``root`` (hidden files and folders left out), sorted, with its class
    index and the class names: the subfolders of ``root``, or one class when it has none."""
    if not root.is_dir():
        raise DataNotFoundError(f"data.root={root} is not a folder of images")

    def images_in(folder: Path) -> list[Path]:
        return sorted(
            p
            for p in folder.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )

    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subfolders:
        files, labels = [], []
        for index, folder in enumerate(subfolders):
            found = images_in(folder)
            files += found
            labels += [index] * len(found)
        classes = [folder.name for folder in subfolders]
    else:
        files, classes = images_in(root), ["images"]
        labels = [0] * len(files)
    if not files:
        raise DataNotFoundError(f"data.root={root} holds no PNG or JPEG images (in it, or in one subfolder per class)")
    return files, labels, classes


def cache_key(root: Path, files: list[Path], image_size: int | None, channels: int | None) -> str:
    """A hash of the settings and of every file's path (relative to ``root``) and bytes."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{CACHE_FORMAT} {image_size} {channels} {torch.__version__.split('+')[0]}\n".encode())
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def decode(path: Path, image_size: int | None) -> torch.Tensor:
    """One file as uint8 (C, H, W), C 1 or 3 (an alpha channel dropped), resized and
    centre-cropped to ``image_size`` when given."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2.functional import center_crop, resize

    image = decode_image(str(path), mode=ImageReadMode.UNCHANGED)
    if image.shape[0] in (2, 4):  # grey or RGB with alpha
        image = image[:-1]
    if image.shape[0] not in (1, 3):
        raise ValueError(f"{image.shape[0]} channels")
    if image_size is not None:
        image = center_crop(resize(image, image_size, antialias=True), [image_size, image_size])
    return image


def to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (C, H, W) as (channels, H, W): grey repeated into RGB, or RGB to grey (ITU-R 601-2 luma)."""
    from torchvision.transforms.v2.functional import rgb_to_grayscale

    if image.shape[0] == channels:
        return image
    return image.expand(3, -1, -1).clone() if channels == 3 else rgb_to_grayscale(image)


def read_folder(
    root: Path,
    listed: tuple[list[Path], list[int], list[str]],
    image_size: int | None,
    channels: int | None,
    bad_files: str,
) -> FolderImages:
    """Decode every image ``list_images`` found (see the module's docstring)."""
    files, labels, classes = listed
    decoded, kept, skipped = [], [], []
    for path, label in zip(files, labels, strict=True):
        try:
            decoded.append(decode(path, image_size))
        except Exception as error:  # noqa: BLE001 - any file torchvision cannot read is a bad file
            if bad_files == "error":
                raise DataCorruptError(
                    f"{path} is not a readable PNG or JPEG image ({first_line(error)}); remove it, "
                    "or set data.bad_files=skip"
                ) from None
            skipped.append(path.relative_to(root).as_posix())
            continue
        kept.append((path, label))
    if not decoded:
        raise DataCorruptError(f"data.root={root}: none of its {len(files)} image files could be read")
    channels = channels or (3 if any(image.shape[0] == 3 for image in decoded) else 1)
    sizes = {tuple(image.shape[1:]) for image in decoded}
    if len(sizes) > 1:
        shown = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)[:3])
        raise DataCorruptError(
            f"data.root={root} holds images of different sizes ({shown}, ...): set data.image_size=N "
            "to resize and centre-crop them to N x N"
        )
    images = torch.stack([to_channels(image, channels) for image in decoded])
    return FolderImages(
        images=images,
        labels=torch.tensor([label for _, label in kept], dtype=torch.int64),
        classes=classes,
        files=[path.relative_to(root).as_posix() for path, _ in kept],
        skipped=skipped,
    )


def load_folder(
    root: str | Path, image_size: int | None, channels: int | None, bad_files: str, cache_allowed: bool = True
) -> FolderImages:
    """The folder's images, from the cache when its key matches, else decoded and (with
    ``cache_allowed``: a folder the user named, not one a file from elsewhere did) cached."""
    from vaelab.errors import UserError
    from vaelab.runs import write_file
    from vaelab.safe_load import read_checkpoint

    root = Path(root).expanduser()
    listed = list_images(root)
    key = cache_key(root, listed[0], image_size, channels)
    cache = root / CACHE_DIR / f"{key}-{bad_files}.pt"
    if cache.is_file():
        try:
            saved = read_checkpoint(cache, "data cache")
            files, skipped = (saved[name].split("\n") if saved[name] else [] for name in ("files", "skipped"))
            folder = FolderImages(saved["images"], saved["labels"], list(saved["classes"]), files, skipped)
            log.info("data: %d images from the cache %s", len(folder.files), cache)
            return folder
        except (UserError, KeyError, TypeError) as error:
            log.warning("data: the cache %s is not usable (%s); decoding the images again", cache, first_line(error))
    folder = read_folder(root, listed, image_size, channels, bad_files)
    if folder.skipped:
        log.warning(
            "data: skipped %d file(s) that are not readable images, e.g. %s", len(folder.skipped), folder.skipped[0]
        )
    if not cache_allowed:
        return folder
    try:
        # the file lists as one string each: a list of N strings would be N values to check on reading
        saved = {**vars(folder), "files": "\n".join(folder.files), "skipped": "\n".join(folder.skipped)}
        write_file(cache, lambda handle: torch.save(saved, handle), root=root)
        log.info("data: decoded %d images, cached in %s", len(folder.files), cache)
    except (OSError, UserError) as error:  # a read-only folder: decode again next time
        log.info("data: not cached (%s)", first_line(error))
    return folder

"""Reading files that vaelab did not write in this process as data, never as code.

- ``read_checkpoint``: ``torch.load(weights_only=True)``, so a pickled callable is refused
  unrun, after the zip archive's expansion is bounded (``check_expansion``), and the loaded
  structure bounded (``check_bounded``), so that a small file with shared references cannot
  expand into gigabytes when it is copied or converted.
- ``read_vaelab_checkpoint``: that, and its hyperparameters checked by the allow-list
  (``vaelab.allow_list.check_checkpoint_config``).
- ``read_file`` / ``load_yaml``: a regular file inside a folder, of bounded size; a FIFO, device
  or symlink out of the folder is refused, never opened.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from vaelab.allow_list import check_checkpoint_config, inside
from vaelab.compat import upgrade_hparams
from vaelab.errors import CheckpointError, UserError, first_line  # noqa: F401 - raised here, imported from here

# a vaelab checkpoint holds about 1,000 values and is 10 deep; a shared-reference bomb expands to billions
MAX_VALUES = 200_000
MAX_DEPTH = 64
MAX_CONFIG_BYTES = 1 << 20


def check_bounded(data, source: str) -> None:
    """Raise UserError when ``data``, walked as a tree (shared references counted every time they
    are reached), has more than MAX_VALUES values or is deeper than MAX_DEPTH. Stops at the limit,
    so a bomb costs no more than MAX_VALUES steps."""
    stack, count = [(data, 0)], 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES or depth > MAX_DEPTH:
            raise UserError(
                f"{source} is refused: its structure is larger than {MAX_VALUES:,} values or deeper than "
                f"{MAX_DEPTH} levels (shared references are counted each time they are reached)"
            )
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for pair in value.items() for item in pair)
        elif isinstance(value, list | tuple | set | frozenset):
            stack.extend((item, depth + 1) for item in value)


MAX_EXPANSION = 20  # torch.save stores tensors uncompressed: a real checkpoint expands about 1x
MAX_EXPANDED_EXTRA = 2 << 30


def check_expansion(path: Path, source: str) -> None:
    """Raise CheckpointError when the zip archive's members add up to more than MAX_EXPANSION
    times the file, or 2 GB more than it: a compressed bomb is refused before it is read."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(f"{source} is not a readable checkpoint: {first_line(error)}") from None
    if total > MAX_EXPANSION * size or total - size > MAX_EXPANDED_EXTRA:
        raise CheckpointError(
            f"{source} is refused: it expands to {total:,} bytes from {size:,} (more than {MAX_EXPANSION}x or 2 GB)"
        )


def read_checkpoint(path: str | Path, key: str = "ckpt") -> dict:
    """The checkpoint at ``path`` as plain data (tensors, numbers, strings, lists, dicts).

    Loaded with ``torch.load(weights_only=True, mmap=True)``: a pickled callable or any other
    object is refused before it is built. ``key`` names the setting in error messages."""
    import torch

    path = Path(path)
    source = f"{key}={path}"
    if not path.is_file():
        raise CheckpointError(f"{source}: no such file" if not path.exists() else f"{source} is not a file")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise CheckpointError(f"{source} is not a readable checkpoint: not a file written by torch.save")
    check_expansion(path, source)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - any failure to read means the same to the user
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(error))
        if unsafe:
            raise CheckpointError(
                f"{source} is refused: it holds a pickled object ({unsafe.group(1)}), and vaelab "
                "loads only tensors and plain data (weights_only=True)"
            ) from None
        raise CheckpointError(f"{source} is not a readable checkpoint: {first_line(error)}") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{source} is not a checkpoint: it holds a {type(checkpoint).__name__}, not a dict")
    try:
        check_bounded(checkpoint, source)
    except UserError as error:
        raise CheckpointError(str(error)) from None
    return checkpoint


def read_vaelab_checkpoint(path: str | Path, key: str = "ckpt") -> dict:
    """``read_checkpoint``, then checked to be vaelab's: weights and model, likelihood, annealing and
    data configs whose every ``_target_`` is on the allow-list."""
    checkpoint = read_checkpoint(path, key)
    hparams = checkpoint.get("hyper_parameters")
    if isinstance(hparams, dict):  # an older release's key names, read as today's
        hparams = checkpoint["hyper_parameters"] = upgrade_hparams(hparams)
    if (
        not isinstance(checkpoint.get("state_dict"), dict)
        or not isinstance(hparams, dict)
        or not all(isinstance(hparams.get(name), dict) for name in ("model", "likelihood", "annealing"))
    ):
        raise CheckpointError(
            f"{key}={path} is not a vaelab checkpoint: it has no state_dict or no model, likelihood "
            "and annealing hyperparameters"
        )
    data_root = (hparams.get("data") or {}).get("root")  # read, never written (VAELitModule.data_module)
    check_checkpoint_config(hparams, f"{key}={path}: hyper_parameters", data_dir=data_root)
    return checkpoint


def read_file(path: str | Path, root: str | Path | None = None, max_bytes: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` that lies inside ``root`` (symlinks
    followed; default: anywhere). A FIFO, device or folder is never opened for reading (a FIFO
    would block), and each refusal is a UserError naming the file."""
    import stat

    path = Path(path)
    if root is not None and not inside(path, root):
        raise UserError(f"{path} is refused: it leads outside {root} (a symlink?)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    with os.fdopen(fd, "rb") as handle:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            raise UserError(f"{path} is refused: not a regular file (a folder, FIFO or device)")
        if found.st_size > max_bytes:
            raise UserError(f"{path} is refused: larger than {max_bytes:,} bytes")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UserError(f"{path} is refused: larger than {max_bytes:,} bytes")
    return data


def load_yaml(path: Path, source: str, kind: type = dict, root: Path | None = None) -> DictConfig | ListConfig:
    """A YAML mapping (or, with ``kind=list``, a list) read as data: a regular file (inside
    ``root`` when given) of at most MAX_CONFIG_BYTES, no key given twice, its aliases bounded
    (``check_bounded``)."""
    try:
        text = read_file(path, root).decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{source} is not readable YAML: {first_line(error)}") from None
    except UserError as error:
        raise UserError(f"{source}: {error}") from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader that refuses repeated keys
    except yaml.YAMLError as error:
        raise UserError(f"{source} is not readable YAML: {' '.join(str(error).split())[:300]}") from None
    if not isinstance(data, kind):
        raise UserError(f"{source} holds a {type(data).__name__}, not a {kind.__name__}")
    check_bounded(data, source)  # YAML aliases are shared references: bounded before OmegaConf expands them
    return OmegaConf.create(text)  # OmegaConf's own YAML rules (1e-3 is a float)


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping giving a key twice (the later would win unseen)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

"""Test helpers: tiny synthetic IDX files in torchvision's layout, and the real Hydra config."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vaelab.cli import CONFIG_DIR, VERSION_BASE  # noqa: F401 - the packaged configs; importing registers the resolvers

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("VAELAB_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))
FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """uint8 (N, H, W) -> an uncompressed IDX3 file (magic 2051)."""
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    """uint8 (N,) -> an uncompressed IDX1 file (magic 2049)."""
    path.write_bytes(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def synthetic_digits(n: int, seed: int, stripes: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 images with noise, whose class (0-9) decides where a bright 8x8 block sits
    (or, with ``stripes``, which two rows of bright horizontal stripes they have)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(n, 28, 28))
    for i, label in enumerate(labels):
        if stripes:
            images[i, 2 + 2 * int(label) : 4 + 2 * int(label), :] = 255
            images[i, :, 12:16] = 200
        else:
            row, col = divmod(int(label), 4)
            images[i, 2 + 8 * row : 10 + 8 * row, 2 + 6 * col : 10 + 6 * col] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_synthetic_dataset(root: Path, name: str, n_train: int = 240, n_test: int = 60) -> Path:
    raw = root / FOLDERS[name] / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = synthetic_digits(n, seed, stripes=name == "fashion_mnist")
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


FAST = [
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "data.batch_size=32",
    "data.eval_batch_size=64",
    "data.val_size=40",
]


def write_image_folder(
    root: Path, per_class: int = 12, classes: int = 2, size: tuple[int, int] = (40, 36), rgb: bool = True
) -> Path:
    """Generated images in ``root/<class>/`` (or ``root/`` with ``classes=0``), PNG and JPEG in
    turn, each class a bright block in its own corner over noise, grey or RGB, of ``size`` (H, W)."""
    import torch
    from torchvision.io import encode_jpeg, write_png

    generator = torch.Generator().manual_seed(0)
    for label in range(max(classes, 1)):
        folder = root / f"class_{label}" if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = (torch.rand(3 if rgb else 1, *size, generator=generator) * 60).to(torch.uint8)
            image[:, 4 * label : 4 * label + 12, 4 * label : 4 * label + 12] = 250
            if i % 2:
                (folder / f"{i:03d}.jpg").write_bytes(encode_jpeg(image, quality=95).numpy().tobytes())
            else:
                write_png(image, str(folder / f"{i:03d}.png"))
    return root


def three_killable_epochs(tmp_path: Path) -> list[str]:
    """Overrides of a deterministic 3-epoch run on 3000 synthetic images in batches of 16: long
    enough epochs to kill one in the middle (``kill_at_checkpoint``), no image panels."""
    root = write_synthetic_dataset(tmp_path / "data", "mnist", n_train=3000, n_test=100)
    return [
        *FAST,
        "trainer.max_epochs=3",
        "trainer.deterministic=true",
        "data.batch_size=16",
        "data.val_size=200",
        "callbacks.image_panels.every_n_epochs=10",
        f"data.root={root}",
    ]


def compose(
    overrides: list[str] | None = None,
    *,
    output_dir: Path | None = None,
    data_root: Path | None = None,
    config_name: str = "train",
    return_hydra_config: bool = False,
):
    """A real config (``train`` unless ``config_name``: ``eval``, ``sample``, ``classifier``),
    composed with Hydra's compose API (no Hydra run folder). The one way the tests compose."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    extra = []
    if output_dir is not None:
        extra.append(f"paths.output_dir={output_dir}")
    if data_root is not None:
        extra.append(f"data.root={data_root}")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), **VERSION_BASE):
        return hydra_compose(config_name, [*(overrides or []), *extra], return_hydra_config=return_hydra_config)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a `python train.py` subprocess: W&B offline, and not attached to this
    process's W&B service (an in-process run exports WANDB_SERVICE, which children would share)."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env["WANDB_MODE"] = "offline"
    env.update(extra)
    return env


def python_cli(*args: str, timeout: float = 600, cwd: Path = PROJECT_ROOT, env: dict | None = None, **options):
    """``python *args`` as a user runs it (in the project folder unless ``cwd``; W&B offline, no
    stdin; ``env`` in place of ``child_env()``), its output captured as text; ``options`` go to
    subprocess.run. The one way the tests run a command."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env if env is not None else child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **options,
    )


def train_cli(*args: str, **options):
    """``python train.py *args`` (``python_cli``'s options)."""
    return python_cli(str(PROJECT_ROOT / "train.py"), *args, **options)


def vaelab_cli(command: str, *args: str, **options):
    """``python -m vaelab.<command> *args``, e.g. ``vaelab_cli("evaluate", "ckpt=...")`` (``python_cli``'s options)."""
    return python_cli("-m", f"vaelab.{command}", *args, **options)


def kill_at_checkpoint(args: list[str], checkpoint_glob: str, root: Path, timeout: float = 400) -> str:
    """Start ``python train.py *args``, wait for ``root.glob(checkpoint_glob)`` to find a file
    (a run's first last.ckpt), let it run 0.2 s into its next epoch and SIGKILL it. Returns its stderr."""
    process = subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "train.py"), *args],
        cwd=PROJECT_ROOT,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + timeout
    while not list(root.glob(checkpoint_glob)) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, stderr[-2000:]  # killed, not ended by itself
    return stderr


def differing_metrics(got: dict, expected: dict) -> dict:
    """{key: (got, expected)} of the final metrics that differ beyond float summation order; wall
    clock measurements (time/..., images per second) are left out."""
    return {
        key: (got.get(key), value)
        for key, value in expected.items()
        if not key.startswith("time/")
        and key != "train/images_per_second"
        and got.get(key) != pytest.approx(value, rel=1e-5, abs=1e-6)
    }


def snapshot(folder: Path, bookkeeping: tuple[str, ...] = ("train.log", ".lock")) -> dict[str, tuple[int, bytes]]:
    """Every file below folder but the log and the lock (which a failed start may append to or
    leave): relative path -> (mtime in ns, content)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in folder.rglob("*")
        if p.is_file() and p.name not in bookkeeping
    }


def render(page, tmp_path, fragment: str = "") -> str:
    """The DOM of page after Chromium (headless) has loaded it and run its script."""
    browser = next(
        (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None
    )
    if browser is None:
        pytest.skip("no Chromium: apt-get install chromium (Debian) to render the report headless")
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
        + ["--dump-dom", f"{page.as_uri()}{fragment}"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def assert_metrics_over_every_image(
    run_dir: Path, data_root: Path, world_size: int, logged: dict | None = None, draws: int = 64
) -> None:
    """The val/ and test/ metrics of a multi-process run (``logged``, by default its status.json's)
    are those of every image of the splits, not of one rank's shard: recomputed here in one process
    from the run's last.ckpt (the run trains one epoch, so it is also the checkpoint tested).

    - The KL, each dimension's KL, the active units and the mutual information are deterministic
      given the weights: equal to float rounding (rel 1e-5).
    - The ELBO and the reconstruction term draw one z per image: within 5 standard errors of
      their mean over ``draws`` draws (the Monte Carlo error of an N-image mean, sigma / sqrt(N)).
    - So that the check can fail: some shard's KL differs from the whole split's beyond 1e-5."""
    import json

    import torch

    import vaelab
    from vaelab.diagnostics import kl_per_dimension, summarize
    from vaelab.results.evaluation import per_image_negative_elbo

    if logged is None:
        logged = json.loads((run_dir / "status.json").read_text())["metrics"]
    module = vaelab.load(run_dir / "checkpoints" / "last.ckpt")
    data = module.data_module(str(data_root))
    torch.manual_seed(0)
    with torch.no_grad():
        for split, dataset in (("val", data.val_set), ("test", data.test_set)):
            images, labels = dataset.images, dataset.labels
            assert len(images) % world_size == 0, "pick split sizes that divide by the world size"
            mean, logvar = module.vae.encode(images, labels if module.vae.conditional else None)
            kl = kl_per_dimension(mean, logvar)  # (D,) mean over images
            assert logged[f"{split}/kl"] == pytest.approx(float(kl.sum()), rel=1e-5), split
            shards = [(mean[r::world_size], logvar[r::world_size]) for r in range(world_size)]
            shard_kls = [float(kl_per_dimension(*shard).sum()) for shard in shards]
            if world_size > 1:
                assert any(s != pytest.approx(float(kl.sum()), rel=1e-5) for s in shard_kls), "shards alike"
            negative_elbo = torch.stack([per_image_negative_elbo(module, images, labels) for _ in range(draws)], 1)
            expected = -float(negative_elbo.mean())
            error = 5 * float(negative_elbo.var(dim=1).mean().sqrt()) / len(images) ** 0.5
            assert abs(logged[f"{split}/elbo"] - expected) <= error, (split, logged[f"{split}/elbo"], expected, error)
            assert abs(logged[f"{split}/recon"] - (-expected - float(kl.sum()))) <= error, split
            if split == "val":
                diagnostics = summarize(mean, logvar)
                assert logged["val/active_units"] == diagnostics["active_units"]
                assert logged["val/mutual_info"] == pytest.approx(diagnostics["mutual_info"], rel=1e-5, abs=1e-6)
                for d, value in enumerate(diagnostics["kl_per_dim"]):
                    assert logged[f"val/kl_dim/{d:02d}"] == pytest.approx(value, rel=1e-5, abs=1e-7), d

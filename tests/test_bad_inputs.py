"""Every bad input a user can give, as a real command: exit status 1, one clear line, nothing half-made left behind."""

import shutil
from pathlib import Path

import pytest
import torch
from helpers import FAST, child_env, compose, python_cli, write_image_folder, write_synthetic_dataset

from vaelab.training import train


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, data_root) -> Path:
    """A real checkpoint of a tiny unconditional VAE."""
    run_dir = tmp_path_factory.mktemp("good_run")
    train(compose([*FAST, "logger=none", "test=false", "model.latent_dim=2"], output_dir=run_dir, data_root=data_root))
    return run_dir / "checkpoints" / "last.ckpt"


def damaged_data(root: Path, how: str) -> Path:
    """A synthetic MNIST copy with one file damaged."""
    write_synthetic_dataset(root, "mnist")
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    labels = root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    data = images.read_bytes()
    if how == "no images":  # a header that says 0 images, and a label file that agrees
        images.write_bytes(data[:4] + (0).to_bytes(4, "big") + data[8:16])
        labels.write_bytes(labels.read_bytes()[:4] + (0).to_bytes(4, "big"))
    elif how == "label 12":
        label_bytes = bytearray(labels.read_bytes())
        label_bytes[8 + 5] = 12
        labels.write_bytes(bytes(label_bytes))
    else:
        images.write_bytes(data[:-100] if how == "truncated" else b"\x00\x00\x07\x07" + data[4:])
    return root


def broken_image_folder(root):
    """A folder of images whose first file is cut short."""
    write_image_folder(root, per_class=4, classes=2)
    first = root / "class_0" / "000.png"
    first.write_bytes(first.read_bytes()[:60])
    return root


def train_cmd(*overrides):
    return ["train.py", *FAST, *overrides]


# id: (command given (tmp, data_root, ckpt), the message, the outputs that must not exist (given tmp))
ROWS = {
    "negative beta": (lambda t, d, c: train_cmd("model.beta=-1"), "model.beta=-1.0 is not allowed: a number >= 0"),
    "unknown group option": (lambda t, d, c: train_cmd("likelihood=poisson"), "Could not find 'likelihood/poisson'"),
    "unknown key": (lambda t, d, c: train_cmd("model.bet=4"), "Could not override 'model.bet'"),
    "ckpt_path=last": (lambda t, d, c: train_cmd("ckpt_path=last"), "ckpt_path=last: a new run has no last checkpoint"),
    "bad annealing": (lambda t, d, c: train_cmd("annealing=linear", "annealing.warmup_steps=-5"), "warmup_steps"),
    "unknown panel": (
        lambda t, d, c: train_cmd("+callbacks.image_panels.panels.histogram=true"),
        "callbacks.image_panels.panels.histogram: unknown panel",
    ),
    "missing data": (
        lambda t, d, c: train_cmd(f"data.root={t / 'nowhere'}", "data.download=false"),
        "mnist data not found in",
    ),
    "not a folder of images": (
        lambda t, d, c: train_cmd("data=folder", f"data.root={t / 'no_images'}", "data.val_size=null"),
        "no_images is not a folder of images",
    ),
    "an unreadable image with bad_files=error": (
        lambda t, d, c: train_cmd(
            "data=folder",
            f"data.root={broken_image_folder(t / 'images')}",
            "data.val_size=null",
            "data.bad_files=error",
        ),
        "class_0/000.png is not a readable PNG or JPEG image",
    ),
    "truncated IDX file": (
        lambda t, d, c: train_cmd(f"data.root={damaged_data(t / 'cut', 'truncated')}"),
        "the file is truncated or corrupt",
    ),
    "resume without checkpoint": (
        lambda t, d, c: train_cmd(f"resume={t / 'not_a_run'}"),
        "there is no checkpoints/last.ckpt",
    ),
    "eval missing checkpoint": (
        lambda t, d, c: ["-m", "vaelab.evaluate", f"ckpt={t / 'none.ckpt'}"],
        "none.ckpt: no such file",
    ),
    "eval garbage checkpoint": (
        lambda t, d, c: ["-m", "vaelab.evaluate", f"ckpt={garbage(t)}"],
        "garbage.ckpt is not a readable checkpoint",
    ),
    "sample label without CVAE": (
        lambda t, d, c: ["-m", "vaelab.sample", f"ckpt={c}", "label=3", f"out={t / 'out.png'}"],
        "label=3 needs a conditional VAE checkpoint",
    ),
    "compare nothing": (
        lambda t, d, c: ["-m", "vaelab.compare", str(t / "nowhere"), "--out", str(t / "cmp")],
        "no such folder",
    ),
    "negative max_epochs": (lambda t, d, c: train_cmd("trainer.max_epochs=-5"), "trainer.max_epochs=-5 is not allowed"),
    "Trainer refuses a value": (lambda t, d, c: train_cmd("trainer.accelerator=abacus"), "trainer: "),
    "checkpoint is a text file": (
        lambda t, d, c: train_cmd(f"ckpt_path={text_file(t)}"),
        "notes.txt is not a readable checkpoint",
    ),
    "checkpoint of another latent size": (
        lambda t, d, c: train_cmd(f"ckpt_path={c}", "model.latent_dim=5"),
        "does not fit this model: model.latent_dim is 5 here, 2 in the checkpoint",
    ),
    "resume a file": (lambda t, d, c: train_cmd(f"resume={c}"), "last.ckpt is a file: give the run folder"),
    "log folder cannot be made": (
        lambda t, d, c: train_cmd(f"paths.log_dir={text_file(t)}/logs"),
        "cannot create the run folder",
    ),
    "log folder refused by the kernel": (  # /proc passes the permission check, then refuses mkdir
        lambda t, d, c: train_cmd("paths.log_dir=/proc/vaelab-logs"),
        "cannot write /proc/vaelab-logs: No such file or directory",
    ),
    "run folder cannot be made": (
        lambda t, d, c: train_cmd(f"hydra.run.dir={text_file(t)}/run"),
        "notes.txt is a file",
    ),
    "sample steps=0": (
        lambda t, d, c: ["-m", "vaelab.sample", f"ckpt={c}", "kind=interpolations", "steps=0", f"out={t / 'out.png'}"],
        "steps=0 is not allowed",
    ),
    "eval val split without one": (
        lambda t, d, c: ["-m", "vaelab.evaluate", f"ckpt={without_val_split(c, t)}", "split=val", f"data_root={d}"],
        "split=val: the checkpoint's data has no val images",
    ),
    "eval GPU without one": (
        lambda t, d, c: ["-m", "vaelab.evaluate", f"ckpt={c}", "device=cuda"],
        "device=cuda: no CUDA GPU is available",
    ),
    "eval output folder missing": (
        lambda t, d, c: ["-m", "vaelab.evaluate", f"ckpt={c}", f"out={t / 'no' / 'x.json'}"],
        "the folder",
    ),
    "classifier zero epochs": (
        lambda t, d, c: ["-m", "vaelab.classifier", "epochs=0", f"data.root={d}", f"out={t / 'out.png'}"],
        "epochs=0 is not allowed",
    ),
    "bench bad override value": (
        lambda t, d, c: bench_cmd(d, t, "--override", "model.beta=-1"),
        "model.beta=-1.0 is not allowed: a number >= 0",
    ),
    "bench missing data": (lambda t, d, c: bench_cmd(t / "nowhere", t), "mnist data not found in"),
    "IDX header says 0 images": (
        lambda t, d, c: train_cmd(f"data.root={damaged_data(t / 'empty', 'no images')}"),
        "train-images-idx3-ubyte: its header says it holds 0 images",
    ),
    "CVAE label out of range": (
        lambda t, d, c: train_cmd("model=cvae", f"data.root={damaged_data(t / 'labels', 'label 12')}"),
        "train-labels-idx1-ubyte: a label is 12, outside 0..9",
    ),
    "duplicate key in a resumed config": (
        lambda t, d, c: train_cmd(f"resume={duplicate_key_run(c, t)}"),
        "config.yaml is not readable YAML: the key 'seed' is given twice",
    ),
    "seed outside numpy's range": (lambda t, d, c: train_cmd("seed=4294967296"), "seed=4294967296 is not allowed"),
    "bogus WANDB_MODE": (
        lambda t, d, c: train_cmd("logger=wandb"),
        "WANDB_MODE='sometimes' (environment) is not a W&B mode",
    ),
    "bad MASTER_PORT": (
        lambda t, d, c: train_cmd("trainer=ddp_spawn"),
        "MASTER_PORT='99999' (environment) is not allowed",
    ),
    "GPU asked for without one": (
        lambda t, d, c: train_cmd("trainer.accelerator=gpu"),
        "trainer.accelerator='gpu' is not allowed",
    ),
    "compare a damaged status.json": (
        lambda t, d, c: ["-m", "vaelab.compare", str(damaged_status_run(c, t)), "--out", str(t / "cmp")],
        "status.json is not readable JSON",
    ),
}
ENVIRONMENT = {"bogus WANDB_MODE": {"WANDB_MODE": "sometimes"}, "bad MASTER_PORT": {"MASTER_PORT": "99999"}}


def duplicate_key_run(ckpt: Path, tmp: Path) -> Path:
    """A copy of the good run whose config.yaml gives seed twice."""
    run = tmp / "duplicate"
    shutil.copytree(ckpt.parent.parent, run)
    config = run / ".hydra" / "config.yaml"
    config.write_text(config.read_text() + "seed: 7\n")
    return run


def damaged_status_run(ckpt: Path, tmp: Path) -> Path:
    run = tmp / "damaged"
    shutil.copytree(ckpt.parent.parent, run)
    (run / "status.json").write_text('{"status": "ok", "metr')
    return run


def bench_cmd(data_root, tmp: Path, *args):
    return ["scripts/bench.py", "--data-root", str(data_root), "--out", str(tmp / "bench.json"), *args]


def text_file(tmp: Path) -> Path:
    path = tmp / "notes.txt"
    path.write_text("not a checkpoint\n")
    return path


def without_val_split(ckpt: Path, tmp: Path) -> Path:
    """A copy of the checkpoint whose data config has no validation split (data.val_size=0)."""
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["data"]["val_size"] = 0
    path = tmp / "no_val.ckpt"
    torch.save(checkpoint, path)
    return path


def garbage(tmp: Path) -> Path:
    path = tmp / "garbage.ckpt"
    path.write_bytes(b"not a checkpoint at all" * 10)
    return path


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input(row, tmp_path, data_root, ckpt):
    build, message = ROWS[row]
    args = build(tmp_path, data_root, ckpt)
    run_dir, ckpt_files = tmp_path / "run", sorted(ckpt.parent.iterdir())
    if args[0] == "train.py":
        args += (
            []
            if any(a.startswith(("hydra.run.dir=", "paths.log_dir=")) for a in args)
            else [f"hydra.run.dir={run_dir}"]
        )
        args += [] if any(a.startswith("data.root=") for a in args) else [f"data.root={data_root}"]
    result = python_cli(*args, timeout=180, env=child_env(**ENVIRONMENT.get(row, {})))
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    # nothing half-made: no run folder, no results file, no picture, no report; the good checkpoint's folder untouched
    assert not run_dir.exists(), sorted(p.name for p in run_dir.rglob("*"))
    assert (
        not (tmp_path / "out.png").exists()
        and not (tmp_path / "cmp").exists()
        and not (tmp_path / "bench.json").exists()
    )
    assert not list(tmp_path.glob("*.eval.json")) and sorted(ckpt.parent.iterdir()) == ckpt_files
    shutil.rmtree(tmp_path / "wandb_home", ignore_errors=True)

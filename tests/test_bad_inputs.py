"""Every bad input a user can give, as a real command: exit status 1, one clear line, nothing half-made left behind."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import FAST, PROJECT_ROOT, child_env, compose, write_synthetic_dataset

from vaelab.train import train


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
    data = images.read_bytes()
    images.write_bytes(data[:-100] if how == "truncated" else b"\x00\x00\x07\x07" + data[4:])
    return root


def train_cmd(*overrides):
    return ["train.py", *FAST, *overrides]


# id: (command given (tmp, data_root, ckpt), the message, the outputs that must not exist (given tmp))
ROWS = {
    "negative beta": (lambda t, d, c: train_cmd("model.beta=-1"), "model.beta=-1.0 is not allowed: a number >= 0"),
    "zero latent_dim": (lambda t, d, c: train_cmd("model.latent_dim=0"), "model.latent_dim=0 is not allowed"),
    "zero batch_size": (lambda t, d, c: train_cmd("data.batch_size=0"), "data.batch_size=0 is not allowed"),
    "zero learning rate": (lambda t, d, c: train_cmd("model.optimizer.lr=0"), "model.optimizer.lr=0"),
    "unknown binarize": (lambda t, d, c: train_cmd("data.binarize=maybe"), "data.binarize='maybe' is not allowed"),
    "val_size too big": (lambda t, d, c: train_cmd("data.val_size=70000"), "data.val_size=70000 is not allowed"),
    "seed not a number": (lambda t, d, c: train_cmd("seed=abc"), "seed='abc' is not allowed: an integer"),
    "unknown precision": (lambda t, d, c: train_cmd("trainer.precision=fp8"), "trainer.precision='fp8' is not allowed"),
    "compile not a bool": (lambda t, d, c: train_cmd("compile=maybe"), "compile='maybe' is not allowed: true or false"),
    "unknown group option": (lambda t, d, c: train_cmd("loss=poisson"), "Could not find 'loss/poisson'"),
    "unknown key": (lambda t, d, c: train_cmd("model.bet=4"), "Could not override 'model.bet'"),
    "bad annealing": (lambda t, d, c: train_cmd("annealing=linear", "annealing.warmup_steps=-5"), "warmup_steps"),
    "unknown panel": (lambda t, d, c: train_cmd("+callbacks.sample_grids.panels.histogram=true"),
                      "callbacks.sample_grids.panels.histogram: unknown panel"),
    "missing data": (lambda t, d, c: train_cmd(f"data.root={t / 'nowhere'}", "data.download=false"),
                     "mnist data not found in"),
    "truncated IDX file": (lambda t, d, c: train_cmd(f"data.root={damaged_data(t / 'cut', 'truncated')}"),
                           "the file is truncated or corrupt"),
    "wrong magic number": (lambda t, d, c: train_cmd(f"data.root={damaged_data(t / 'magic', 'magic')}"),
                           "not an uncompressed IDX images file"),
    "resume without checkpoint": (lambda t, d, c: train_cmd(f"resume={t / 'not_a_run'}"), "there is no checkpoints/last.ckpt"),
    "eval missing checkpoint": (lambda t, d, c: ["-m", "vaelab.evaluate", f"ckpt={t / 'none.ckpt'}"], "none.ckpt: no such file"),
    "eval garbage checkpoint": (lambda t, d, c: ["-m", "vaelab.evaluate", f"ckpt={garbage(t)}"],
                                "is not a readable vaelab checkpoint"),
    "eval foreign checkpoint": (lambda t, d, c: ["-m", "vaelab.evaluate", f"ckpt={foreign(t)}"],
                                "is not a readable vaelab checkpoint"),
    "eval truncated checkpoint": (lambda t, d, c: ["-m", "vaelab.evaluate", f"ckpt={truncated(c, t)}"],
                                  "is not a readable vaelab checkpoint"),
    "sample label without CVAE": (lambda t, d, c: ["-m", "vaelab.sample", f"ckpt={c}", "label=3", f"out={t / 'out.png'}"],
                                  "label=3 needs a conditional VAE checkpoint"),
    "sample unknown kind": (lambda t, d, c: ["-m", "vaelab.sample", f"ckpt={c}", "kind=sketch", f"out={t / 'out.png'}"],
                            "kind=sketch is not allowed"),
    "eval k=0": (lambda t, d, c: ["-m", "vaelab.evaluate", f"ckpt={c}", "k=0"], "k=0 is not allowed: an integer >= 1"),
    "eval unknown split": (lambda t, d, c: ["-m", "vaelab.evaluate", f"ckpt={c}", "split=train"],
                           "split='train' is not allowed: test or val"),
    "eval unknown ood data": (lambda t, d, c: ["-m", "vaelab.evaluate", f"ckpt={c}", "ood=cifar10"],
                              "ood='cifar10' is not allowed"),
    "sample n=0": (lambda t, d, c: ["-m", "vaelab.sample", f"ckpt={c}", "n=0", f"out={t / 'out.png'}"], "n=0 is not allowed"),
    "compare nothing": (lambda t, d, c: ["-m", "vaelab.compare", str(t / "nowhere"), "--out", str(t / "cmp")], "no such folder"),
    "bench bad override value": (lambda t, d, c: bench_cmd(d, t, "--override", "model.beta=-1"),
                                 "model.beta=-1.0 is not allowed: a number >= 0"),
    "bench unknown override key": (lambda t, d, c: bench_cmd(d, t, "--override", "model.bet=4"),
                                   "--override: Could not override 'model.bet'"),
    "bench missing data": (lambda t, d, c: bench_cmd(t / "nowhere", t), "mnist data not found in"),
}


def bench_cmd(data_root, tmp: Path, *args):
    return ["scripts/bench.py", "--data-root", str(data_root), "--out", str(tmp / "bench.json"), *args]


def garbage(tmp: Path) -> Path:
    path = tmp / "garbage.ckpt"
    path.write_bytes(b"not a checkpoint at all" * 10)
    return path


def foreign(tmp: Path) -> Path:
    path = tmp / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, path)
    return path


def truncated(ckpt: Path, tmp: Path) -> Path:
    path = tmp / "truncated.ckpt"
    path.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    return path


def test_the_table_has_at_least_20_rows():
    assert len(ROWS) >= 20


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input(row, tmp_path, data_root, ckpt):
    build, message = ROWS[row]
    args = build(tmp_path, data_root, ckpt)
    run_dir, ckpt_files = tmp_path / "run", sorted(ckpt.parent.iterdir())
    if args[0] == "train.py":
        args += [f"hydra.run.dir={run_dir}"] + ([] if any(a.startswith("data.root=") for a in args) else [f"data.root={data_root}"])
    result = subprocess.run([sys.executable, *args], cwd=PROJECT_ROOT, env=child_env(), capture_output=True, text=True,
                            timeout=180, stdin=subprocess.DEVNULL)
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert any(message in line for line in errors), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    # nothing half-made: no run folder, no results file, no picture, no report; the good checkpoint's folder untouched
    assert not run_dir.exists(), sorted(p.name for p in run_dir.rglob("*"))
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "cmp").exists() and not (tmp_path / "bench.json").exists()
    assert not list(tmp_path.glob("*.eval.json")) and sorted(ckpt.parent.iterdir()) == ckpt_files
    shutil.rmtree(tmp_path / "wandb_home", ignore_errors=True)

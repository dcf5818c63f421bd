"""Files are data, never code: crafted checkpoints and run configs are refused by every entry point,
and what they carry never runs (a marker file stays absent, no file is written)."""

import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import FAST, compose, python_cli, snapshot, vaelab_cli

from vaelab.errors import ConfigError
from vaelab.safe_load import (
    MAX_VALUES,
    CheckpointError,
    read_checkpoint,
    read_vaelab_checkpoint,
)
from vaelab.training import train


class RunsCode:
    """Pickles as a call to os.system: loading it without weights_only would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, data_root) -> Path:
    run_dir = tmp_path_factory.mktemp("good")
    train(compose([*FAST, "logger=none", "test=false", "model.latent_dim=2"], output_dir=run_dir, data_root=data_root))
    return run_dir


def crafted(good_run: Path, folder: Path, how: str) -> tuple[Path, Path]:
    """(a run folder whose checkpoints/last.ckpt is a crafted copy of the good one, the marker file)."""
    marker = folder / "MARKER"
    run_dir = folder / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(good_run / ".hydra", run_dir / ".hydra") if (good_run / ".hydra").is_dir() else None
    checkpoint = torch.load(good_run / "checkpoints" / "last.ckpt", weights_only=True)
    if how == "pickled callable":
        checkpoint["hyper_parameters"]["note"] = RunsCode(marker)
    elif how == "foreign target":  # would write the marker file when instantiated
        checkpoint["hyper_parameters"]["likelihood"] = {
            "_target_": "pathlib.Path.write_text",
            "self": str(marker),
            "data": "x",
        }
    elif how == "shared-reference bomb":  # 5 KB on disk, 2**40 values when expanded
        nested = [0]
        for _ in range(40):
            nested = [nested, nested]
        checkpoint["hyper_parameters"]["bomb"] = nested
    torch.save(checkpoint, run_dir / "checkpoints" / "last.ckpt")
    return run_dir, marker


ENTRY_POINTS = {
    "train ckpt_path": lambda run, out, d: [
        "train.py",
        *FAST,
        f"data.root={d}",
        "logger=csv",
        f"hydra.run.dir={out}",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
    ],
    "train resume": lambda run, out, d: ["train.py", *FAST, f"data.root={d}", "logger=csv", f"resume={run}"],
    "eval": lambda run, out, d: [
        "-m",
        "vaelab.evaluate",
        f"ckpt={run / 'checkpoints' / 'last.ckpt'}",
        f"out={out}.json",
    ],
    "eval scan": lambda run, out, d: [
        "-m",
        "vaelab.evaluate",
        f"ckpt={run / 'checkpoints' / 'last.ckpt'}",
        "scan=true",
    ],
    "sample": lambda run, out, d: [
        "-m",
        "vaelab.sample",
        f"ckpt={run / 'checkpoints' / 'last.ckpt'}",
        f"out={out}.png",
    ],
}
MESSAGES = {
    "pickled callable": "holds a pickled object (posix.system)",
    "foreign target": "hyper_parameters: likelihood._target_='pathlib.Path.write_text' is not allowed",
    "shared-reference bomb": f"is refused: its structure is larger than {MAX_VALUES:,} values",
}
CASES = [(how, entry) for how in ("pickled callable", "foreign target") for entry in ENTRY_POINTS]
CASES += [("shared-reference bomb", "eval")]


@pytest.mark.parametrize("how, entry", CASES, ids=[f"{h}: {e}" for h, e in CASES])
def test_every_entry_point_refuses_a_crafted_checkpoint_without_running_it(how, entry, tmp_path, good_run, data_root):
    run_dir, marker = crafted(good_run, tmp_path, how)
    before = snapshot(run_dir)
    out = tmp_path / "out"
    result = python_cli(*ENTRY_POINTS[entry](run_dir, out, data_root), timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and MESSAGES[how] in errors[0] and "last.ckpt" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not marker.exists()  # the pickled call or the foreign target never ran
    assert not any(tmp_path.glob("out*"))  # no run folder, results file or picture
    assert snapshot(run_dir) == before  # the run folder is left as it was (but for its log and lock)


def test_a_cached_classifier_with_a_pickled_callable_is_refused(tmp_path, data_root):
    marker, cached = tmp_path / "MARKER", tmp_path / "mnist.pt"
    torch.save({"state_dict": {}, "num_classes": 10, "test_accuracy": RunsCode(marker)}, cached)
    result = vaelab_cli("classifier", f"out={cached}", f"data.root={data_root}", timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: classifier={cached} is refused: it holds a pickled object (posix.system)" in result.stderr
    assert not marker.exists()


def test_in_process_loading_refuses_the_same_files(tmp_path, good_run):
    from vaelab.module import VAELitModule

    for how, error in (
        ("pickled callable", CheckpointError),
        ("foreign target", ConfigError),
        ("shared-reference bomb", CheckpointError),
    ):
        run_dir, marker = crafted(good_run, tmp_path / how.replace(" ", "_"), how)
        with pytest.raises(error, match=MESSAGES[how].replace("(", r"\(").replace(")", r"\)")):
            VAELitModule.from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
        assert not marker.exists()
    module = VAELitModule.from_checkpoint(good_run / "checkpoints" / "last.ckpt")  # the good one loads
    assert module.vae.latent_dim == 2 and not module.training


def test_non_checkpoints_are_one_line_errors(tmp_path, good_run):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"ckpt=.*notes.txt is not a readable checkpoint"):
        read_checkpoint(text)
    with pytest.raises(CheckpointError, match=r"resume=.* is not a file"):
        read_checkpoint(tmp_path, "resume")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match="is not a checkpoint: it holds a Tensor"):
        read_checkpoint(tensor)
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(CheckpointError, match="is not a vaelab checkpoint"):
        read_vaelab_checkpoint(plain)

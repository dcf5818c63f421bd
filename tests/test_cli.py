"""What the five commands share (vaelab.cli): --cfg and --help without the heavy imports, a
closed pipe, and Hydra's errors as one line."""

import subprocess
import sys

from helpers import python_cli, train_cli, vaelab_cli
from omegaconf import OmegaConf


def test_cfg_job_prints_the_composed_config_without_torch():
    result = train_cli("model=beta_vae", "model.beta=4", "--cfg", "job", timeout=60)
    assert result.returncode == 0, result.stderr
    printed = OmegaConf.create(result.stdout)
    assert printed.model.name == "beta_vae" and printed.model.beta == 4.0
    for entry_point in ("train", "evaluate", "sample", "classifier", "compare"):  # --help and --cfg stay fast
        heavy = "{'torch', 'lightning', 'wandb'}"
        probe = f"import sys, vaelab.cli.{entry_point}; print(sorted({heavy} & set(sys.modules)))"
        imported = python_cli("-c", probe, timeout=60)
        assert imported.stdout.strip() == "[]", (entry_point, imported.stdout, imported.stderr)


def test_help_into_a_closed_pipe_is_no_traceback():

    reader_gone = subprocess.Popen(
        [sys.executable, "-m", "vaelab.train", "--help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    reader_gone.stdout.close()  # as `vaelab-train --help | head -1` once head has its line
    stderr = reader_gone.stderr.read().decode()
    assert reader_gone.wait(timeout=60) == 1 and "Traceback" not in stderr, stderr


def test_a_sweep_with_a_value_of_the_wrong_type_stops_before_any_job(tmp_path):

    result = vaelab_cli(
        "train",
        "-m",
        "data.batch_size=64,abc",
        "logger=csv",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: Error merging override data.batch_size=abc: Value 'abc' of type 'str' could not be converted to Integer"
    ]
    assert not (tmp_path / "sweep").exists()  # no job started, and no sweep folder left behind

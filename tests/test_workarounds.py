"""The workarounds: a tiny default run prints only vaelab's lines, Lightning's model summary and
progress bar, and W&B's offline notice (a new third-party line or warning fails here); the NVML
probe is off only without a GPU."""

import os
import re

import torch
from helpers import child_env, python_cli, train_cli

from vaelab.workarounds import skip_nvml_cuda_probe, skip_unstaged_launch_inputs

# the third-party warnings a tiny run may print (message start); add one only with a reason
KNOWN_WARNINGS: set[str] = set()
ALLOWED_LINE = re.compile(
    r"^\[[0-9: ,-]+\]\[vaelab\.[a-z_.]+\]\[(INFO|WARNING)\] - "  # vaelab's own lines
    r"|^wandb: (W&B syncing is set to `offline`|Run data is saved locally in|View this run in the terminal)"
    r"|^[┏┃┡│└]|^(Trainable|Non-trainable|Total|Modules in) "  # Lightning's model summary
    r"|(Sanity Checking|Training|Validation|Testing|Epoch \d+)\b.*(it/s|s/it|\?)"  # its progress bar
)
WARNING_LINE = re.compile(r"^\S+\.py:\d+: (?P<message>.*)|^wandb: WARNING (?P<wandb>.*)|\]\[WARNING\] - (?P<log>.*)")


def test_a_tiny_default_run_prints_nothing_else(tmp_path, data_root):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")  # Lightning hints at srun wherever it is on the PATH
    (fake_bin / "srun").chmod(0o755)
    env = child_env(PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    env.pop("WANDB_SILENT", None)  # W&B as a user sees it
    env.pop("WANDB_QUIET", None)
    result = train_cli(
        *["trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"],
        *["trainer.limit_test_batches=1", "data.val_size=40", f"data.root={data_root}", "paths.log_dir=logs"],
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [part.strip() for line in (result.stdout + result.stderr).splitlines() for part in line.split("\r")]
    lines = [line for line in lines if line and line != "\x1b[A"]
    warnings = []
    for line in lines:
        found = WARNING_LINE.search(line)
        if found and "][vaelab." not in line:
            warnings.append(next(group for group in found.groups() if group))
    unknown = [w for w in warnings if not any(w.startswith(known) for known in KNOWN_WARNINGS)]
    assert unknown == [] and len(warnings) == len(KNOWN_WARNINGS), warnings
    others = [line for line in lines if not ALLOWED_LINE.search(line) and not WARNING_LINE.search(line)]
    assert others == [], others
    assert sum(line.startswith("wandb: ") for line in lines) == 3  # the offline notice, once
    assert any("final metrics (nats per image)" in line for line in lines)
    # real: with 1 batch per epoch and log_every_n_steps=50 no training step is logged; vaelab says
    # so where Lightning, which sees a fetch of up to steps_per_fetch batches, no longer can
    said = "[vaelab.inner_steps][WARNING] - The number of training batches (1) is smaller than the logging interval"
    assert sum(said in line for line in lines) == 1
    assert any(line.startswith("┏") for line in lines)  # the model summary is still there


def test_nvml_cuda_probe_is_off_only_without_a_gpu(monkeypatch):
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    skip_nvml_cuda_probe()
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"  # a GPU: CUDA must stay fork-safe
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    skip_nvml_cuda_probe()
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "0"


def test_wandb_init_imports_its_launch_package_only_when_inputs_can_be_staged(tmp_path):
    code = (
        "import sys, wandb\n"
        "from vaelab.workarounds import skip_unstaged_launch_inputs\n"
        "if sys.argv[2] == 'skip': skip_unstaged_launch_inputs()\n"
        "wandb.init(mode='offline', dir=sys.argv[1]).finish()\n"
        "print('launch imported:', 'wandb.sdk.launch' in sys.modules)\n"
    )
    for how, imported in (("skip", False), ("as-is", True)):
        result = python_cli("-c", code, str(tmp_path), how, env=child_env(), timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"launch imported: {imported}" in result.stdout, how


def test_staged_launch_inputs_are_still_applied(monkeypatch):
    import sys
    import types

    from wandb.sdk.wandb_run import Run

    applied = []
    monkeypatch.setattr(Run, "_detect_and_apply_job_inputs", lambda run: applied.append(run))
    skip_unstaged_launch_inputs()
    skip_unstaged_launch_inputs()  # twice: wrapped once
    monkeypatch.delitem(sys.modules, "wandb.sdk.launch.inputs.internal", raising=False)
    Run._detect_and_apply_job_inputs("run 1")
    assert applied == []
    name = "wandb.sdk.launch.inputs.internal"
    monkeypatch.setitem(sys.modules, name, types.ModuleType(name))  # what staging an input imports
    Run._detect_and_apply_job_inputs("run 2")
    assert applied == ["run 2"]


EXIT_PROBE = """
import atexit, gc, logging, sys
handler = logging.FileHandler(sys.argv[1])
logging.getLogger("probe").addHandler(handler)
atexit.register(lambda: print("after the freeze:", gc.get_freeze_count() > 0))  # registered before: runs after
from vaelab.workarounds import skip_final_garbage_collection
skip_final_garbage_collection()
atexit.register(logging.getLogger("probe").warning, "written by an exit handler registered later")
atexit.register(lambda: print("before the freeze:", gc.get_freeze_count()))
"""


def test_a_command_exits_without_collecting_its_objects_and_keeps_its_log_lines(tmp_path):
    log_file = tmp_path / "exit.log"
    done = python_cli("-c", EXIT_PROBE, str(log_file), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.index("before the freeze: 0") < done.stdout.index("after the freeze: True")
    # logging's own exit handler still flushes the log file
    assert log_file.read_text() == "written by an exit handler registered later\n"

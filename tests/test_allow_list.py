"""The allow-list: what a config read from a file may name, interpolate and point at."""

from __future__ import annotations

import inspect
import re

import pytest
import torch
import yaml
from helpers import CONFIG_DIR, FAST

from vaelab import allow_list
from vaelab.allow_list import check_targets, find_targets, is_allowed
from vaelab.errors import ConfigError


def test_every_target_that_vaelab_ships_is_allowed():
    shipped = []
    for path in CONFIG_DIR.rglob("*.yaml"):
        # launchers, sweepers, samplers and pruners are Hydra's settings, never instantiated from a file
        if "hydra" not in path.relative_to(CONFIG_DIR).parts:
            config = yaml.safe_load(path.read_text()) or {}
            shipped += [target for _, target in find_targets({k: v for k, v in config.items() if k != "hydra"})]
    assert len(shipped) > 20
    assert [target for target in shipped if not is_allowed(target)] == []


@pytest.mark.parametrize(
    "target",
    [
        "builtins.exec",
        "os.system",
        "pathlib.Path.write_text",
        "torch.load",
        "torch.save",
        "subprocess.Popen",
        "vaelab.train.main",  # a vaelab function, not a class
        "vaelab.train.Path",  # a class imported into vaelab, not defined there
        "torch.optim.lr_scheduler.LambdaLR.__init__",
        "lightning.pytorch.callbacks.Callback.on_fit_start",
        "lightning.pytorch.seed_everything",
        "torch.optim.Optimizer.__class__",
        "vaelab.nowhere.Thing",
        "",
        42,
    ],
)
def test_targets_outside_the_allow_list_are_refused(target):
    assert not is_allowed(target)
    with pytest.raises(ConfigError, match=r"model\.net\.encoder\._target_=.* is not allowed"):
        check_targets({"model": {"net": {"encoder": {"_target_": target}}}}, "resume=R")


def test_a_users_own_class_is_trusted_only_through_the_environment(tmp_path, data_root, monkeypatch):
    import vaelab

    (tmp_path / "mylab_callbacks.py").write_text("import lightning as L\n\n\nclass Quiet(L.Callback):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("VAELAB_TRUSTED_TARGETS", raising=False)
    run = tmp_path / "run"
    args = [*FAST, "logger=none", "callbacks.image_panels=null", "test=false", f"data.root={data_root}"]
    args += ["+callbacks.quiet._target_=mylab_callbacks.Quiet"]  # given by the user, not read from a file
    vaelab.train([*args, f"hydra.run.dir={run}"])
    again = [*args, "trainer.max_epochs=2", f"resume={run}"]
    refused = r"callbacks\.quiet\._target_='mylab_callbacks\.Quiet' is not allowed.*VAELAB_TRUSTED_TARGETS"
    with pytest.raises(ConfigError, match=refused):
        vaelab.train(again)  # the run folder's config.yaml names it: data, refused
    monkeypatch.setenv("VAELAB_TRUSTED_TARGETS", "numpy.*, mylab_callbacks.*")
    assert is_allowed("mylab_callbacks.Quiet") and not is_allowed("mylab_callbacksx.Quiet")
    vaelab.train(again)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


def test_every_path_argument_of_every_allowed_class_is_checked():
    """Walk each allowed class's signature: an argument whose name says file, folder or path must
    be in PATH_ARGUMENTS (checked) or NOT_PATHS (with the reason it is not a path)."""
    import importlib

    looks_like_a_path = re.compile(r"dir|path|file|root|save|log|output|folder|version|prefix|name|^id$|registry")
    unchecked = []
    for target in sorted(allow_list.VAELAB_CLASSES | allow_list.LIGHTNING_CALLBACKS | allow_list.LIGHTNING_LOGGERS) + [
        "lightning.pytorch.Trainer"
    ]:
        module_name, _, name = target.rpartition(".")
        parameters = inspect.signature(getattr(importlib.import_module(module_name), name).__init__).parameters
        for argument in parameters:
            handled = {**allow_list.PATH_ARGUMENTS.get(target, {}), **allow_list.NOT_PATHS.get(target, {})}
            if looks_like_a_path.search(argument) and argument not in handled:
                unchecked.append(f"{target}({argument})")
        for argument in allow_list.PATH_ARGUMENTS.get(target, {}):
            takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
            assert argument in parameters or takes_kwargs, f"{target} has no argument {argument}"
    assert unchecked == []


def test_the_path_check_refuses_what_leads_out_and_keeps_what_stays_in(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "out").symlink_to(tmp_path, target_is_directory=True)
    checkpoint = {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint", "filename": "last"}
    allow_list.check_paths({"c": {**checkpoint, "dirpath": f"{run_dir}/checkpoints"}}, "f", run_dir, None)
    for dirpath in (f"{run_dir}/../elsewhere", f"{run_dir}/out/x", "/tmp", "relative/in/cwd"):
        with pytest.raises(ConfigError, match=r"c\.dirpath="):
            allow_list.check_paths({"c": {**checkpoint, "dirpath": dirpath}}, "f", run_dir, None)
    allow_list.check_paths({"c": {**checkpoint, "dirpath": "relative"}}, "f", run_dir, None, trusted=["c.dirpath"])


def test_a_data_set_from_a_file_is_read_as_data_and_its_folder_never_written(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from vaelab.allow_list import check_file_config

    def data_config(**data):
        target = {"_target_": "vaelab.data.VAEDataModule"}
        return OmegaConf.create({"data": {**target, "root": str(tmp_path / "theirs"), **data}})

    pickled = data_config(source="torchvision", name="CIFAR10")
    with pytest.raises(ConfigError, match=r"data.name='CIFAR10' is refused in a config read from a file: .* pickle"):
        check_file_config(pickled, "resume=R", tmp_path / "run")
    monkeypatch.setenv("VAELAB_TRUSTED_TARGETS", "torchvision.datasets.CIFAR10")
    check_file_config(pickled, "resume=R", tmp_path / "run")  # the user's own choice
    folder = data_config(source="folder", name="folder", cache=True, download=True)
    check_file_config(folder, "resume=R", tmp_path / "run", data_dir=tmp_path / "mine")
    assert (folder.data.cache, folder.data.download) == (False, False)  # read, never cached or downloaded into
    mine = data_config(source="folder", name="folder", cache=True)
    check_file_config(mine, "resume=R", tmp_path / "run", data_dir=tmp_path / "theirs")
    assert mine.data.cache is True  # the data folder this command names is the user's

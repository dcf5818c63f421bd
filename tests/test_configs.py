"""Every option of every config group composes, resolves and instantiates."""

import subprocess
import sys

import pytest
from helpers import CONFIG_DIR, PROJECT_ROOT, compose
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vaelab.module import VAELitModule
from vaelab.training import switched_on

GROUPS = [
    "data",
    "model",
    "likelihood",
    "annealing",
    "trainer",
    "logger",
    "callbacks",
    "experiment",
    "hparams_search",
    "debug",
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_every_group_exists_with_options():
    for group in GROUPS:
        assert options(group), f"configs/{group}/ has no options"
    assert {"vae", "beta_vae", "cvae"} <= set(options("model"))
    assert set(options("annealing")) == {"none", "linear", "cyclical", "sigmoid"}
    assert {"default", "cpu", "gpu", "ddp", "ddp_spawn"} <= set(options("trainer"))
    assert {"wandb", "csv", "none"} <= set(options("logger"))


ALL_OPTIONS = [(group, option) for group in GROUPS for option in options(group)]


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_option_composes_and_instantiates(group, option, tmp_path, data_root):
    overrides = [f"{group}={option}", "trainer.accelerator=cpu"]
    cfg = compose(overrides, output_dir=tmp_path, data_root=data_root)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["paths"]["output_dir"] == str(tmp_path)
    datamodule = instantiate(cfg.data)
    module = VAELitModule.from_config(cfg, datamodule)
    assert module.vae.conditional == resolved["model"]["conditional"]
    for logger_cfg in (cfg.logger or {}).values():
        assert logger_cfg._target_.startswith("lightning.pytorch.loggers.")
    callbacks = cfg.callbacks or {}
    every = [(name, settings) for name, settings in callbacks.items() if settings is not None]
    for _, callback_cfg in switched_on(OmegaConf.create({n: {**s, "enabled": True} for n, s in every})):
        callback = instantiate(callback_cfg)  # each, switched on, builds the class it names with its settings
        assert f"{type(callback).__module__}.{type(callback).__name__}".endswith(callback_cfg._target_.split(".")[-1])
        for key, value in callback_cfg.items():
            if key != "_target_" and hasattr(callback, key) and isinstance(value, int | float | str | bool):
                assert getattr(callback, key) == value, (callback_cfg._target_, key)
    if group == "trainer" and option not in ("gpu",):
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert trainer.max_epochs == cfg.trainer.max_epochs


def test_command_line_values_reach_the_model(tmp_path):
    cfg = compose(["model=beta_vae", "model.beta=8", "model.latent_dim=3", "data=fashion_mnist"], output_dir=tmp_path)
    assert (cfg.model.name, cfg.model.beta, cfg.model.latent_dim, cfg.data.name) == ("beta_vae", 8, 3, "fashion_mnist")
    assert compose(["model=beta_vae"], output_dir=tmp_path).model.beta == 4.0
    assert compose(["model=vae"], output_dir=tmp_path).model.beta == 1.0
    assert cfg.run_name == "beta_vae-fashion_mnist-z3-b8.0-s0"  # model.beta is a float (ModelSchema)


def test_data_root_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_DATA_DIR", "/somewhere/else")
    assert compose(output_dir=tmp_path).data.root == "/somewhere/else"
    monkeypatch.delenv("VAELAB_DATA_DIR")
    monkeypatch.chdir(tmp_path)  # data and logs follow the folder the command runs in, not the source tree
    cfg = compose(output_dir=tmp_path)
    assert (cfg.data.root, cfg.paths.log_dir) == (str(tmp_path / "data"), str(tmp_path / "logs"))


def test_cfg_job_prints_the_composed_config_without_torch():
    result = subprocess.run(
        [sys.executable, "train.py", "model=beta_vae", "model.beta=4", "--cfg", "job"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    printed = OmegaConf.create(result.stdout)
    assert printed.model.name == "beta_vae" and printed.model.beta == 4.0
    for entry_point in ("train", "evaluate", "sample", "classifier", "compare"):  # --help and --cfg stay fast
        heavy = "{'torch', 'lightning', 'wandb'}"
        probe = f"import sys, vaelab.cli.{entry_point}; print(sorted({heavy} & set(sys.modules)))"
        imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        assert imported.stdout.strip() == "[]", (entry_point, imported.stdout, imported.stderr)


def test_help_into_a_closed_pipe_is_no_traceback():
    import subprocess
    import sys

    reader_gone = subprocess.Popen(
        [sys.executable, "-m", "vaelab.train", "--help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    reader_gone.stdout.close()  # as `vaelab-train --help | head -1` once head has its line
    stderr = reader_gone.stderr.read().decode()
    assert reader_gone.wait(timeout=60) == 1 and "Traceback" not in stderr, stderr

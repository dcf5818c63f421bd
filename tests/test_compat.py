"""Former names (vaelab.compat): command lines, run folders and checkpoints of the previous
release's layout keep working."""

import pytest
import torch
import yaml
from helpers import FAST, train_cli

import vaelab
from vaelab.allow_list import is_allowed
from vaelab.compat import FORMER_TARGETS, upgrade_hparams, upgrade_overrides
from vaelab.runs import config_file, last_checkpoint_file, overrides_file, read_status

# what the previous release wrote: the likelihood under `loss`, the panels under
# `callbacks.sample_grids`, and classes at their former paths
OLD_LIKELIHOOD = "vaelab.objectives.BernoulliLikelihood"
OLD_PANELS = "vaelab.callbacks.SampleGrids"
OLD_ARTIFACTS = "vaelab.callbacks.CheckpointArtifacts"


def test_former_keys_on_the_command_line_are_read_as_today_s(capsys):
    given = ["loss=gaussian", "loss.sigma=0.2", "+callbacks.sample_grids.num_images=4", "model.beta=2"]
    assert upgrade_overrides(given) == [
        "likelihood=gaussian",
        "likelihood.sigma=0.2",
        "+callbacks.image_panels.num_images=4",
        "model.beta=2",
    ]
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 3 and warnings[0].startswith("warning: loss is now likelihood")
    assert upgrade_overrides(["lossy=1", "model.loss=2"]) == ["lossy=1", "model.loss=2"]  # other keys untouched


def test_former_hyperparameter_names_are_renamed_unless_today_s_are_there():
    assert upgrade_hparams({"model": {}, "loss": {"_target_": OLD_LIKELIHOOD}}) == {
        "model": {},
        "likelihood": {"_target_": OLD_LIKELIHOOD},
    }
    both = {"likelihood": {"a": 1}, "loss": {"b": 2}}
    assert upgrade_hparams(both) == both


@pytest.mark.parametrize("former", sorted(FORMER_TARGETS))
def test_every_former_class_path_still_names_today_s_class(former):
    import importlib

    def resolve(path: str):
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)

    former_class, current_class = resolve(former), resolve(FORMER_TARGETS[former])
    assert issubclass(former_class, current_class)
    assert is_allowed(former) and is_allowed(FORMER_TARGETS[former])


def make_previous_release_run(run) -> None:
    """Rewrite a run folder made now into the previous release's layout: its saved config, its
    saved overrides and its last checkpoint's hyperparameters."""
    config = yaml.safe_load(config_file(run).read_text())
    config["loss"] = {**config.pop("likelihood"), "_target_": OLD_LIKELIHOOD}
    callbacks = config["callbacks"]
    callbacks["sample_grids"] = {**callbacks.pop("image_panels"), "_target_": OLD_PANELS}
    callbacks["checkpoint_artifacts"]["_target_"] = OLD_ARTIFACTS
    config_file(run).write_text(yaml.safe_dump(config))
    overrides = [o.replace("likelihood=", "loss=") for o in yaml.safe_load(overrides_file(run).read_text())]
    overrides_file(run).write_text(yaml.safe_dump(overrides))
    checkpoint = torch.load(last_checkpoint_file(run), weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    hparams["loss"] = {**hparams.pop("likelihood"), "_target_": OLD_LIKELIHOOD}
    torch.save(checkpoint, last_checkpoint_file(run))


def test_a_run_folder_of_the_previous_layout_is_evaluated_and_resumed(tmp_path, data_root):
    run = tmp_path / "run"
    settings = [*FAST, f"data.root={data_root}", "logger=csv", "test=false", "callbacks.image_panels.every_n_epochs=1"]
    first = train_cli(*settings, "likelihood=bernoulli", f"hydra.run.dir={run}")
    assert first.returncode == 0, first.stderr[-2000:]
    make_previous_release_run(run)
    assert "loss:" in config_file(run).read_text() and OLD_PANELS in config_file(run).read_text()

    results = vaelab.evaluate(
        last_checkpoint_file(run), k=2, limit_images=40, data_root=str(data_root), generation=False
    )
    assert results["test/nll"] > 0 and results["test/elbo"] < 0  # nats per image, from the old checkpoint
    described = vaelab.load(last_checkpoint_file(run))
    assert type(described.likelihood).__name__ == "BernoulliLikelihood"

    resumed = train_cli(f"resume={run}", "trainer.max_epochs=2")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert read_status(run)["status"] == "ok"
    assert sorted(p.name for p in (run / "images" / "samples").iterdir()) == ["epoch=000.png", "epoch=001.png"]
    assert torch.load(last_checkpoint_file(run), weights_only=True)["epoch"] == 1  # trained on from epoch 1


def test_loss_on_the_command_line_still_chooses_the_likelihood():
    shown = train_cli("--cfg", "job", "loss=gaussian", "loss.sigma=0.2")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "warning: loss is now likelihood" in shown.stderr
    likelihood = yaml.safe_load(shown.stdout)["likelihood"]
    assert likelihood == {"_target_": "vaelab.likelihoods.GaussianLikelihood", "sigma": 0.2, "learn_sigma": False}

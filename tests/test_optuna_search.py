"""vaelab's Optuna sweeper on Optuna >= 4: the search space, objectives, and real studies run
through `python train.py hparams_search=...` (TPE, rate–distortion, pruned and failed trials)."""

import csv
import json
import math

import pytest
from helpers import FAST, kill_at_checkpoint, three_killable_epochs, train_cli
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from vaelab.cli.train import with_multirun
from vaelab.optuna_search import objective_values, override_value, read_front, read_results, search_space, trial_id_of
from vaelab.results.comparison import compare, pareto_front
from vaelab.runs import short_number

optuna = pytest.importorskip("optuna", reason="pip install -e '.[optuna]'")
QUICK = [
    *FAST,
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "callbacks.image_panels.every_n_epochs=5",
    "test=false",
    "logger=csv",
]


def parse(*overrides):
    return OverridesParser.create().parse_overrides(list(overrides))


def test_the_search_space_maps_hydras_grammar_to_optuna_distributions():
    space, fixed = search_space(
        parse(
            "model.beta=tag(log, interval(0.25, 8.0))",
            "model.latent_dim=choice(2, 5, 10)",
            "data.batch_size=range(32, 129, 32)",
            "model.hidden=int(interval(64, 512))",
            "seed=3",
            "model.latent_dim=choice(2, 3)",  # a later override of a key wins (the command line)
        )
    )
    d = optuna.distributions
    assert space["model.beta"] == d.FloatDistribution(0.25, 8.0, log=True)
    assert space["model.latent_dim"] == d.CategoricalDistribution([2, 3])
    assert space["data.batch_size"] == d.IntDistribution(32, 128, step=32)
    assert space["model.hidden"] == d.IntDistribution(64, 512)
    assert fixed == ["seed=3"]


@pytest.mark.parametrize("value", [1.6748913598497648, 1e-7, 3, True, None, "beta_vae", "a b'c", "null", -0.5])
def test_a_sampled_value_reads_back_exactly_as_an_override(value):
    parsed = parse(f"key={override_value(value)}")[0]
    assert parsed.value() == value and type(parsed.value()) is type(value)


def test_an_objective_that_cannot_be_reported_says_why():
    assert objective_values([470.5, 0.7], ["val/recon", "val/kl"]) == [470.5, 0.7]
    with pytest.raises(ValueError, match="val/nope was not logged .logged: val/elbo"):
        objective_values(None, ["val/nope"], {"val/elbo": -90.0, "val/kl_dim/00": 1.0})
    with pytest.raises(ValueError, match="val/elbo is nan"):
        objective_values(math.nan, ["val/elbo"])
    with pytest.raises(ValueError, match="returned 1 objective values for 2"):
        objective_values(-90.0, ["val/recon", "val/kl"])


def test_the_pareto_front_is_every_point_no_other_dominates():
    points = [(1.0, 5.0), (2.0, 3.0), (3.0, 3.0), (4.0, 1.0), (2.0, 6.0), (1.0, 5.0)]
    assert pareto_front(points) == [0, 1, 3, 5]  # (3, 3) and (2, 6) are dominated; equal points both stay
    assert pareto_front(points, signs=(-1.0, 1.0)) == [3]  # x maximized: (4, 1) beats every other point
    assert pareto_front(points, signs=(-1.0, -1.0)) == [2, 3, 4]  # both maximized


def test_a_trials_storage_id_is_found_from_its_number():
    study = optuna.create_study()
    trials = [study.ask() for _ in range(3)]
    assert [trial_id_of(study, t.number) for t in trials] == [t._trial_id for t in trials]


def test_run_names_round_floats_and_a_search_is_a_multirun():
    assert [short_number(v) for v in (1.6748913598497648, 4.0, 0.00123456, 10)] == ["1.67", "4.0", "0.00123", "10"]
    assert with_multirun(["hparams_search=optuna", "seed=1"]) == ["--multirun", "hparams_search=optuna", "seed=1"]
    assert with_multirun(["-m", "hparams_search=optuna"]) == ["-m", "hparams_search=optuna"]
    assert with_multirun(["hparams_search=optuna", "--cfg", "job"]) == ["hparams_search=optuna", "--cfg", "job"]
    assert with_multirun(["model.beta=2"]) == ["model.beta=2"]


def search(tmp_path, data_root, *args):
    """``python train.py *args`` on the tiny data, into ``tmp_path/sweep``: (result, sweep folder)."""
    sweep_dir = tmp_path / "sweep"
    return train_cli(*args, *QUICK, f"data.root={data_root}", f"hydra.sweep.dir={sweep_dir}"), sweep_dir


def summary(sweep_dir):
    with open(sweep_dir / "sweep_summary.csv") as handle:
        return list(csv.DictReader(handle))


def overrides_of(row):
    return dict(item.split("=", 1) for item in row["overrides"].split())


def test_a_tpe_study_of_three_trials_reads_back_from_its_sqlite_storage(tmp_path, data_root):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = [
        "hparams_search=optuna",  # no -m: vaelab-train adds it
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
        f"hydra.sweeper.storage={storage}",
    ]
    result, sweep_dir = search(tmp_path, data_root, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = summary(sweep_dir)
    assert [row["status"] for row in rows] == ["ok"] * 3
    study = optuna.load_study(study_name="vaelab-mnist-vae", storage=storage)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    for trial, row in zip(trials, rows, strict=True):
        assert row["job"].startswith(f"{trial.number}_")  # the job number is the trial number
        assert trial.value == pytest.approx(float(row["val/elbo"]), rel=1e-12)
        tried = overrides_of(row)
        assert float(tried["model.beta"]) == trial.params["model.beta"]  # exact, not rounded
        assert int(tried["model.latent_dim"]) == trial.params["model.latent_dim"]
        assert 0.25 <= trial.params["model.beta"] <= 8 and trial.params["model.latent_dim"] in (2, 5, 10, 20, 32)
        config = OmegaConf.load(sweep_dir / row["job"] / ".hydra" / "config.yaml")
        assert config.model.beta == trial.params["model.beta"]
        assert f"-b{short_number(trial.params['model.beta'])}-" in row["job"]  # the folder name rounds it
        assert len(short_number(trial.params["model.beta"]).replace(".", "").lstrip("0")) <= 3
    assert study.best_value == max(t.value for t in trials)
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert best.best_value == pytest.approx(study.best_value) and best.best_params == study.best_params
    assert best.trials == {"COMPLETE": 3, "PRUNED": 0, "FAIL": 0}
    assert "setup plugin" not in result.stdout + result.stderr  # alembic's INFO lines are quiet

    again, _ = search(tmp_path, data_root, *args)  # the same sweep again: it has run its trials, and asks none
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 trials to run" in again.stdout
    assert len(optuna.load_study(study_name="vaelab-mnist-vae", storage=storage).trials) == 3


def test_a_rate_distortion_study_marks_its_pareto_front_in_summary_and_report(tmp_path, data_root):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result, sweep_dir = search(
        tmp_path,
        data_root,
        "hparams_search=rate_distortion",
        "hydra.sweeper.n_trials=4",
        f"hydra.sweeper.storage={storage}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="vaelab-rd-mnist-beta_vae", storage=storage)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    rows = summary(sweep_dir)
    assert [row["status"] for row in rows] == ["ok"] * 4
    by_number = {int(row["job"].split("_")[0]): row for row in rows}
    for trial in study.trials:
        row = by_number[trial.number]
        assert trial.values == pytest.approx([float(row["val/recon"]), float(row["val/kl"])], rel=1e-12)
    front = {t.number for t in study.best_trials}
    assert front and {n for n, row in by_number.items() if row["pareto_front"] == "yes"} == front
    assert "sweep: Pareto front: " + ", ".join(by_number[n]["job"] for n in sorted(front)) in result.stdout

    written = compare([sweep_dir], tmp_path / "compare")
    with open(written["csv"]) as handle:
        compared = {row["run"].rsplit("/", 1)[-1]: row["pareto_front"] for row in csv.DictReader(handle)}
    assert {job for job, mark in compared.items() if mark == "yes"} == {by_number[n]["job"] for n in front}
    page = written["html"].read_text()
    assert "<h3>pareto front</h3>" in page and written["pareto_front"].stat().st_size > 10_000


def test_pruned_trials_are_pruned_not_failed(tmp_path, data_root):
    result, sweep_dir = search(
        tmp_path,
        data_root,
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.storage=null",  # in memory: the jobs run in this process and reach the trial
        "~hydra.sweeper.pruner",
        "+hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 0.0}",  # an ELBO is < 0
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sweep: 0 of 2 jobs ok, 2 pruned" in result.stdout
    rows = summary(sweep_dir)
    assert [row["status"] for row in rows] == ["pruned", "pruned"]
    for row in rows:  # stopped after the first of 2 validation epochs, with what it had logged
        assert row["error"] == f"pruned after epoch 0: val/elbo={float(row['val/elbo']):.6g}"
        logged = csv.DictReader((sweep_dir / row["job"] / "csv" / "metrics.csv").open())
        assert [r["epoch"] for r in logged if r.get("val/elbo")] == ["0"]
    assert OmegaConf.load(sweep_dir / "optimization_results.yaml").trials == {"COMPLETE": 0, "PRUNED": 2, "FAIL": 0}


def test_a_trial_that_cannot_report_its_objective_fails(tmp_path, data_root):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result, sweep_dir = search(
        tmp_path,
        data_root,
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.storage={storage}",
        "optimized_metric=val/nope",
        "hydra.sweeper.pruner=null",
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "sweep: 0 of 2 jobs ok" in result.stdout
    study = optuna.load_study(study_name="vaelab-mnist-vae", storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    for row in summary(sweep_dir):
        assert row["status"] == "failed"
        assert row["error"].startswith("objective not reported: optimized_metric val/nope was not logged")
        assert float(row["val/elbo"]) < 0  # the training itself finished: its metrics stay
    assert result.stderr.count("sweep: job") == 2


def test_directions_that_do_not_match_the_objectives_are_one_line(tmp_path, data_root):
    result, sweep_dir = search(
        tmp_path, data_root, "hparams_search=optuna", "hydra.sweeper.direction=[maximize,minimize]"
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: optimized_metric names 1 metrics (val/elbo) but hydra.sweeper.direction has 2 directions: "
        "give one per metric"
    ]
    assert not sweep_dir.exists()


@pytest.mark.slow
def test_a_killed_search_continues_its_running_trial_in_its_folder(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep_dir = tmp_path / "killed"
    args = ["hparams_search=optuna", "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={storage}"]
    args += [
        "hydra.sweeper.pruner=null",
        *three_killable_epochs(tmp_path),
        "logger=csv",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    kill_at_checkpoint(args, "0_*/checkpoints/last.ckpt", sweep_dir)  # in the trial's second epoch
    study = optuna.load_study(study_name="vaelab-mnist-vae", storage=storage)
    assert [t.state.name for t in study.trials] == ["RUNNING"]
    (job,) = sweep_dir.glob("0_*")
    assert not (job / "status.json").exists()

    result = train_cli(*args, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 trials to run (1 continued)" in result.stdout
    study = optuna.load_study(study_name="vaelab-mnist-vae", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert sorted(p.name.split("_")[0] for p in sweep_dir.glob("*_vae-*")) == ["0", "1"]
    status = json.loads((job / "status.json").read_text())
    assert status["status"] == "ok" and study.trials[0].value == status["metrics"]["val/elbo"]
    # continued from its last.ckpt, not started again: the CSV rows of its first epoch were kept
    epochs = [row["epoch"] for row in csv.DictReader((job / "csv" / "metrics.csv").open()) if row.get("val/elbo")]
    assert epochs == ["0", "1", "2"]
    assert "resum" in (job / "train.log").read_text().lower()


def test_a_results_file_from_elsewhere_is_read_as_data(tmp_path):
    outside = tmp_path / "outside.yaml"
    outside.write_text("pareto_front: [{job: 0_a}]\n")
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "optimization_results.yaml").symlink_to(outside)
    assert read_results(sweep_dir) is None and read_front(sweep_dir) is None  # a symlink is not followed
    (sweep_dir / "optimization_results.yaml").unlink()
    (sweep_dir / "optimization_results.yaml").write_text(
        "objectives: ['${oc.env:HOME}', '${oc.create:{_target_: os.system}}']\n"
        "pareto_front: [{job: '${oc.env:HOME}'}]\n"
    )
    assert read_results(sweep_dir)["objectives"][0] == "${oc.env:HOME}"  # never resolved
    assert read_front(sweep_dir) == {"${oc.env:HOME}"}

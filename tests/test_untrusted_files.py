"""Run folders, sweep folders and checkpoints from elsewhere, crafted as an attacker would: no
interpolation, path argument or symlink in them may run code, write outside, delete or leak.

Each crafted input is built here from a real run. Every command-level case checks the exit
code, the one ``error:`` line naming the key or file, no traceback, that a decoy tree outside
(standing in for site-packages, the user's files and another run's checkpoint) keeps its files,
contents and mtimes, that no secret from the environment reaches any file, and that the crafted
folder is left as it was.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import FAST, child_env, compose, python_cli

from vaelab import safe_load
from vaelab.errors import UserError

SECRET = "s3cret-0f-the-user-7731"


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, data_root) -> Path:
    """A real finished run (CSV logger, image panels, best and last checkpoints)."""
    from vaelab.training import train

    run_dir = tmp_path_factory.mktemp("good") / "run"
    panels = [f"callbacks.image_panels.panels.{p}=false" for p in ("traversals", "interpolations", "latent_scatter")]
    train(
        compose(
            [*FAST, "logger=csv", "test=false", "model.latent_dim=2", *panels], output_dir=run_dir, data_root=data_root
        )
    )
    return run_dir


def make_decoy(root: Path) -> Path:
    """Files outside every folder vaelab is given: what a crafted input must leave alone."""
    decoy = root / "decoy"
    (decoy / "site-packages").mkdir(parents=True)
    (decoy / "site-packages" / "keep.txt").write_text("a package file\n")
    (decoy / "notes.txt").write_text("the user's own notes\n")
    (decoy / "best-epoch-000.ckpt").write_bytes(b"another run's checkpoint")
    (decoy / "private.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image of the run")
    return decoy


def tree_state(folder: Path) -> dict[str, tuple[str, int]]:
    """Every entry below ``folder``: relative path -> (sha256 or "dir" or "link", mtime in ns)."""
    state = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        kind = (
            "link" if path.is_symlink() else "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        )
        state[str(path.relative_to(folder))] = (kind, info.st_mtime_ns)
    return state


def copy_run(good_run: Path, where: Path) -> Path:
    run_dir = where / "run"
    shutil.copytree(good_run, run_dir, symlinks=True)
    (run_dir / ".lock").unlink(missing_ok=True)
    return run_dir


def edit_config(run_dir: Path, change) -> None:
    path = run_dir / ".hydra" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))


def run_command(args: list[str], **options):
    """``python *args`` (``python_cli``) with the secret in its environment."""
    return python_cli(*args, env=child_env(VAELAB_TEST_SECRET=SECRET), timeout=300, **options)


def assert_refused(result, *named: str) -> str:
    """Exit 1, exactly one ``error:`` line naming every string of ``named``, no traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in named:
        assert text in errors[0], errors[0]
    return errors[0]


def no_secret_below(folder: Path) -> bool:
    return not any(p.is_file() and SECRET.encode() in p.read_bytes() for p in folder.rglob("*") if not p.is_symlink())


def nested(config: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        config = config.setdefault(part, {})
    config[last] = value


# a crafted config.yaml of a run folder given to resume=: (key, value, what the error names)
CRAFTED_CONFIGS = {
    "oc.create makes a _target_": (
        "callbacks.evil",
        "${oc.create:{_target_: pathlib.Path.write_text, self: DECOY/site-packages/evil.pth, data: 'import os'}}",
        ["callbacks.evil", "oc.create"],
    ),
    "oc.decode makes a _target_": (
        "callbacks.evil",
        "${oc.decode:'{_target_: pathlib.Path.write_text, self: DECOY/notes.txt, data: x}'}",
        ["callbacks.evil", "oc.decode"],
    ),
    "oc.env leaks a secret into the checkpoint": ("run_name", "${oc.env:VAELAB_TEST_SECRET}", ["run_name", "oc.env"]),
    "an escaped interpolation resolved later": (
        "callbacks.nan_guard.check_every_n_steps",
        "\\${oc.env:VAELAB_TEST_SECRET}",
        ["callbacks.nan_guard.check_every_n_steps", "holds an interpolation"],
    ),
    "a nested _target_ in a list": (
        "trainer.plugins",
        [{"_target_": "vaelab.checkpointing.AtomicCheckpointIO", "root": "RUN"}, {"_target_": "builtins.exec"}],
        ["trainer.plugins[1]._target_", "builtins.exec"],
    ),
    "positional _args_": (
        "callbacks.evil",
        {"_target_": "lightning.pytorch.callbacks.Timer", "_args_": ["DECOY"]},
        ["callbacks.evil._args_"],
    ),
    "ModelCheckpoint.dirpath outside": (
        "callbacks.last_checkpoint.dirpath",
        "DECOY",
        ["callbacks.last_checkpoint.dirpath", "inside the run folder"],
    ),
    "the image panels' output_dir outside": (
        "callbacks.image_panels.output_dir",
        "DECOY",
        ["callbacks.image_panels.output_dir"],
    ),
    "the CSV logger's save_dir outside": ("logger.csv.save_dir", "DECOY", ["logger.csv.save_dir"]),
    "a file-name part that climbs out": ("logger.csv.name", "../../decoy", ["logger.csv.name", "file-name part"]),
    "a W&B keyword that moves its files": (
        "logger.wandb",
        {"_target_": "lightning.pytorch.loggers.WandbLogger", "save_dir": "RUN", "settings": {"root_dir": "DECOY"}},
        ["logger.wandb.settings"],
    ),
    "a Lightning callback that takes code": (
        "callbacks.evil",
        {"_target_": "lightning.pytorch.callbacks.LambdaCallback", "on_fit_start": "x"},
        ["callbacks.evil._target_", "LambdaCallback"],
    ),
}


@pytest.mark.parametrize("case", list(CRAFTED_CONFIGS))
def test_a_crafted_run_config_is_refused_before_anything_runs(case, tmp_path, good_run, data_root):
    decoy = make_decoy(tmp_path)
    run_dir = copy_run(good_run, tmp_path)
    key, value, named = CRAFTED_CONFIGS[case]
    text = yaml.safe_dump(value) if not isinstance(value, str) else value
    value = (
        yaml.safe_load(text.replace("DECOY", str(decoy)).replace("RUN", str(run_dir)))
        if not isinstance(value, str)
        else value.replace("DECOY", str(decoy))
    )
    edit_config(run_dir, lambda config: nested(config, key, value))
    before_decoy, before_run = tree_state(decoy), tree_state(run_dir)
    result = run_command(["train.py", *FAST, "trainer.max_epochs=2", f"data.root={data_root}", f"resume={run_dir}"])
    assert_refused(result, *named)
    assert tree_state(decoy) == before_decoy
    assert {k: v for k, v in tree_state(run_dir).items() if k not in ("train.log", ".lock")} == {
        k: v for k, v in before_run.items() if k not in ("train.log", ".lock")
    }
    assert no_secret_below(tmp_path)


CRAFTED_HPARAMS = {
    "a secret": ("model.name", "${oc.env:VAELAB_TEST_SECRET}", "model.name holds an interpolation"),
    "a made _target_": (
        "likelihood.extra",
        "${oc.create:{_target_: pathlib.Path.write_text, self: X, data: x}}",
        "likelihood.extra holds an interpolation",
    ),
    "a nested target": ("data.root", {"nested": {"_target_": "os.system"}}, "data.root.nested._target_='os.system'"),
}
READER_CASES = [("a secret", entry) for entry in ("eval", "eval scan", "sample", "vaelab.load")]
READER_CASES += [(case, "eval") for case in ("a made _target_", "a nested target")]


@pytest.mark.parametrize("case, entry", READER_CASES, ids=[f"{c}: {e}" for c, e in READER_CASES])
def test_a_crafted_checkpoint_config_is_refused_by_every_reader(case, entry, tmp_path, good_run):
    key, value, named = CRAFTED_HPARAMS[case]
    checkpoint = torch.load(good_run / "checkpoints" / "last.ckpt", weights_only=True)
    nested(checkpoint["hyper_parameters"], key, value)
    path = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, path)
    if entry == "vaelab.load":
        import vaelab

        with pytest.raises(UserError, match=re.escape(named)):
            vaelab.load(path)
        return
    args = {
        "eval": ["-m", "vaelab.evaluate", f"ckpt={path}", f"out={tmp_path / 'out.json'}"],
        "eval scan": ["-m", "vaelab.evaluate", f"ckpt={path}", "scan=true"],
        "sample": ["-m", "vaelab.sample", f"ckpt={path}", f"out={tmp_path / 'out.png'}"],
    }[entry]
    assert_refused(run_command(args), named, "crafted.ckpt")
    assert not list(tmp_path.glob("out*"))


SYMLINKED = [".lock", "train.log", "csv/hparams.yaml", "csv/metrics.csv", "images/samples/epoch=000.png", "status.json"]


@pytest.mark.parametrize("name", SYMLINKED)
def test_a_symlink_in_a_run_folder_is_never_written_through(name, tmp_path, good_run, data_root):
    decoy = make_decoy(tmp_path)
    run_dir = copy_run(good_run, tmp_path)
    (run_dir / name).unlink(missing_ok=True)
    (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
    (run_dir / name).symlink_to(decoy / "notes.txt")
    before = tree_state(decoy)
    result = run_command(["train.py", *FAST, "trainer.max_epochs=2", f"data.root={data_root}", f"resume={run_dir}"])
    assert_refused(result, str(run_dir / name), "symlink")
    assert tree_state(decoy) == before


def test_train_log_is_never_appended_through_a_symlink_or_to_a_fifo(tmp_path):
    """The handler Hydra's job logging uses for train.log (behind the folder walk before a run)."""
    import logging

    from vaelab.runs import NoFollowFileHandler, NotAFileError

    decoy = make_decoy(tmp_path)
    before = tree_state(decoy)
    (tmp_path / "linked.log").symlink_to(decoy / "notes.txt")
    os.mkfifo(tmp_path / "fifo.log")  # no reader: opening it must not block
    for name in ("linked.log", "fifo.log"):
        with pytest.raises(NotAFileError, match=name):
            NoFollowFileHandler(tmp_path / name)
    handler = NoFollowFileHandler(tmp_path / "train.log")
    handler.emit(logging.makeLogRecord({"msg": "a line"}))
    handler.close()
    assert (tmp_path / "train.log").read_text() == "a line\n"
    assert tree_state(decoy) == before


def test_a_sweep_folder_with_symlinks_is_refused_and_compare_never_writes_through_one(tmp_path, good_run):
    decoy = make_decoy(tmp_path)
    sweep = tmp_path / "sweep"
    copy_run(good_run, sweep).rename(sweep / "0_job")
    (sweep / "sweep_summary.csv").symlink_to(decoy / "notes.txt")
    before = tree_state(decoy)
    result = run_command(["train.py", "-m", f"hydra.sweep.dir={sweep}", "model.beta=1,2", *FAST])
    assert_refused(result, "sweep_summary.csv", "symlink")
    (sweep / "sweep_summary.csv").unlink()
    (sweep / "compare").symlink_to(decoy, target_is_directory=True)  # vaelab-compare's default output
    assert_refused(run_command(["-m", "vaelab.compare", str(sweep)]), "compare")
    (sweep / "compare").unlink()
    (sweep / "compare").mkdir()
    (sweep / "compare" / "report.html").symlink_to(decoy / "notes.txt")
    assert_refused(run_command(["-m", "vaelab.compare", str(sweep)]), "report.html", "symlink")
    assert tree_state(decoy) == before


def test_the_report_embeds_only_the_run_folders_own_png_files(tmp_path, good_run):
    from vaelab.results.comparison import compare

    decoy = make_decoy(tmp_path)
    runs = tmp_path / "runs"
    leaking = copy_run(good_run, runs)
    samples = leaking / "images" / "samples"
    for old in samples.glob("*.png"):
        old.unlink()
    (samples / "epoch=009.png").symlink_to(decoy / "private.png")  # a symlink to a file of the user's
    os.mkfifo(samples / "epoch=010.png")  # would block a reader that opens it
    (leaking / "images" / "reconstructions" / "epoch=011.png").write_text("a text file named .png")
    elsewhere = tmp_path / "other"
    copy_run(good_run, elsewhere)
    (runs / "linked").symlink_to(elsewhere / "run", target_is_directory=True)  # another run of the user's
    written = compare([runs], tmp_path / "out")
    page = written["html"].read_text()
    private = base64.b64encode((decoy / "private.png").read_bytes()).decode()
    assert private not in page and "iVBOR" in page  # the plots are embedded, the private file is not
    assert written["count"] == 1 and "linked" not in page


def test_a_crafted_checkpoint_state_cannot_delete_or_load_a_file_outside(tmp_path, good_run, data_root):
    decoy = make_decoy(tmp_path)
    run_dir = copy_run(good_run, tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    outside = str(decoy / "best-epoch-000.ckpt")
    for state in checkpoint["callbacks"].values():
        if "best_model_path" in state:
            state.update(
                best_model_path=outside, kth_best_model_path=outside, best_k_models={outside: torch.tensor(-1e9)}
            )
    torch.save(checkpoint, last)
    before = tree_state(decoy)
    result = run_command(["train.py", *FAST, "trainer.max_epochs=2", f"data.root={data_root}", f"resume={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "names files outside" in result.stderr + result.stdout
    assert tree_state(decoy) == before  # never deleted, never overwritten
    assert torch.load(last, weights_only=True)["epoch"] == 1


@pytest.mark.parametrize(
    "how, named",
    [
        ("optimizer", "cannot be restored"),
        ("rng", "rng_states cannot be restored"),
    ],
)
def test_a_crafted_training_state_is_one_line(how, named, tmp_path, good_run, data_root):
    run_dir = copy_run(good_run, tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    if how == "optimizer":
        checkpoint["optimizer_states"] = [{"state": {}, "param_groups": [{"params": [0, 1]}]}]
    else:
        checkpoint["rng_states"] = {"python": "nonsense"}
    torch.save(checkpoint, last)
    result = run_command(["train.py", *FAST, "trainer.max_epochs=2", f"data.root={data_root}", f"resume={run_dir}"])
    assert_refused(result, named)


def test_a_zip_bomb_checkpoint_is_refused_before_it_is_read(tmp_path):
    import zipfile

    path = tmp_path / "bomb.ckpt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/data.pkl", b"\0" * (64 << 20))
    with pytest.raises(UserError, match="bomb.ckpt is refused: it expands"):
        safe_load.read_checkpoint(path)


def test_a_disk_full_during_a_checkpoint_save_keeps_the_last_one_and_says_failed(tmp_path, good_run, data_root):
    import json
    import resource

    run_dir = copy_run(good_run, tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    limit = len(before) // 2  # every small file still fits; a checkpoint does not (EFBIG, as on a full disk)
    result = run_command(
        ["train.py", *FAST, "trainer.max_epochs=2", f"data.root={data_root}", f"resume={run_dir}"],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    error = assert_refused(result, "cannot write", ".ckpt", "File too large")
    assert last.read_bytes() == before  # the previous last.ckpt, whole
    assert not [p.name for p in run_dir.rglob("*.tmp")]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and status["error"] in error


def test_a_crafted_report_runs_no_script_and_injects_no_element(tmp_path, good_run):
    import json

    from helpers import render

    from vaelab.results.comparison import compare

    mark = 'document.body.dataset.pwned="1"'
    element = '<i class="injected">'  # no "/": it is also a folder and a file name
    runs = tmp_path / "runs"
    run_dir = copy_run(good_run, runs).rename(runs / f'run{element}"onmouseover="{mark}')
    edit_config(run_dir, lambda c: c["model"].update(name=f"<script>{mark}</script>{element}"))
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f'model.beta="><img src=x onerror={mark}>']))
    status = {"status": "failed", "error": f"</pre><script>{mark}</script>{element}", "metrics": {element: 1.0}}
    (run_dir / "status.json").write_text(json.dumps(status))
    samples = run_dir / "images" / "samples"
    picture = next(samples.glob("*.png"))
    picture.rename(samples / f'epoch=009{element}" onload="{mark}.png')
    written = compare([runs], tmp_path / "out")
    page = written["html"].read_text()
    assert "Content-Security-Policy" in page and element not in page
    dom = render(written["html"], tmp_path)
    assert 'data-images-loaded="' in dom  # the report's own script ran
    assert "data-pwned" not in dom and element not in dom  # no script ran, no element was made
    assert '&lt;i class="injected"&gt;' in dom  # shown as text

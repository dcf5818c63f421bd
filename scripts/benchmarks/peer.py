"""Whole runs against a peer: pytorch/examples' `vae/main.py`, run as written, and vaelab's
`python train.py`, each for 1 and 3 epochs, in turn, in fresh processes."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from benchmarks import ROOT
from benchmarks.whole_runs import run_env, seconds_of


def per_epoch_and_fixed(one: float, three: float) -> dict[str, float]:
    """Seconds per epoch and fixed seconds from the wall times of 1- and 3-epoch runs."""
    per_epoch = (three - one) / 2
    return {"one_epoch": one, "three_epochs": three, "per_epoch": per_epoch, "fixed": one - per_epoch}


def bench_peer(peer_script: Path, data_root: str, repeats: int = 2) -> dict[str, dict[str, float]]:
    """The peer runs from a temporary folder whose ``../data`` holds MNIST (as it expects) with a
    ``results/`` folder for its pictures; vaelab runs train.py's default config (validation, test,
    panels, W&B offline). The fastest of ``repeats`` runs of each length counts."""
    env = run_env(data_root)
    times: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as work:
        base = Path(work)
        (base / "data").mkdir()
        (base / "data" / "MNIST").symlink_to(Path(data_root).resolve() / "MNIST")
        for name in ("peer", "vaelab"):
            (base / name / "results").mkdir(parents=True)
        for _ in range(repeats):
            for epochs in (1, 3):
                peer = [sys.executable, str(peer_script.resolve()), "--epochs", str(epochs)]
                ours = [sys.executable, str(ROOT / "train.py"), f"trainer.max_epochs={epochs}"]
                times.setdefault(("peer", epochs), []).append(seconds_of(peer, base / "peer", env))
                times.setdefault(("vaelab", epochs), []).append(seconds_of(ours, base / "vaelab", env))
    result = {name: per_epoch_and_fixed(min(times[name, 1]), min(times[name, 3])) for name in ("peer", "vaelab")}
    peer, ours = result["peer"], result["vaelab"]
    result["speedup_per_epoch"] = peer["per_epoch"] / ours["per_epoch"]
    # the 10-epoch default run (make train), from each side's fixed and per-epoch costs
    result["speedup_10_epochs"] = (peer["fixed"] + 10 * peer["per_epoch"]) / (ours["fixed"] + 10 * ours["per_epoch"])
    return result

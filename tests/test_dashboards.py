"""A real 2×2 sweep with every logger on, looked at the way a user looks at it: TensorBoard's
server and its HTTP API, and vaelab-compare's report rendered in headless Chromium."""

import csv
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import FAST, render, train_cli

pytestmark = pytest.mark.slow  # a sweep of 4 jobs and a TensorBoard server: run by `make test-slow` (and .ci/run)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_root):
    """A finished 2×2 sweep (β = 1, 4; latent_dim = 2, 3) with W&B, TensorBoard and CSV logging."""
    sweep_dir = tmp_path_factory.mktemp("dashboards") / "sweep"
    result = train_cli(
        "-m",
        "model.beta=1,4",
        "model.latent_dim=2,3",
        "logger=many",
        *FAST,
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "callbacks.image_panels.scatter_images=40",
        f"data.root={data_root}",
        f"hydra.sweep.dir={sweep_dir}",
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def has_final_metrics(session_group: dict) -> bool:
    return "final/test/elbo" in {value["name"]["tag"] for value in session_group.get("metricValues", [])}


def test_tensorboard_serves_the_sweeps_runs_and_hparams(sweep, tmp_path):
    pytest.importorskip("tensorboard", reason="pip install 'vaelab[tensorboard]'")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", f"--logdir={sweep}", "--host=127.0.0.1", f"--port={port}"]
        + ["--load_fast=false", "--reload_interval=1"],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "tensorboard.log", "w"),
        stdin=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/data"
    request = {
        "experimentName": "",
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [],
        "startIndex": 0,
        "sliceSize": 100,
    }
    try:
        # the server loads the event files in the background: a run is listed before its hparams
        # summary and final metrics are read, so wait until every run has its whole session group
        runs, groups, deadline = [], [], time.monotonic() + 120
        while not (len(runs) == len(groups) == 4 and all(map(has_final_metrics, groups))):
            assert time.monotonic() < deadline, (runs, groups)
            time.sleep(1)
            try:
                runs = get_json(f"{base}/runs")
                groups = get_json(f"{base}/plugin/hparams/session_groups", request)["sessionGroups"]
            except OSError:
                assert server.poll() is None, (tmp_path / "tensorboard.log").read_text()[-2000:]
        jobs = sorted(path.parent.name for path in sweep.glob("*/tensorboard"))
        assert len(jobs) == 4 and sorted(runs) == [f"{job}/tensorboard" for job in jobs]
        experiment = get_json(f"{base}/plugin/hparams/experiment", {"experimentName": ""})
    finally:
        server.terminate()
        server.wait(timeout=30)
    settings = sorted((g["hparams"]["model.beta"], g["hparams"]["model.latent_dim"]) for g in groups)
    assert settings == [(1.0, 2.0), (1.0, 3.0), (4.0, 2.0), (4.0, 3.0)]
    for group in groups:  # each session group holds its run's final test ELBO, in nats per image
        metrics = {value["name"]["tag"]: value["value"] for value in group["metricValues"]}
        assert metrics["final/test/elbo"] < 0 and metrics["final/test/kl"] >= 0
    assert {"final/test/elbo", "final/test/kl", "final/val/active_units"} <= {
        info["name"]["tag"] for info in experiment["metricInfos"]
    }


def loaded_images(dom: str) -> tuple[int, int]:
    body = re.search(r'<body data-images-total="(\d+)" data-images-loaded="(\d+)"', dom)
    assert body, dom[:500]
    return int(body.group(2)), int(body.group(1))


def test_the_report_renders_in_chromium_with_every_image(sweep, tmp_path):
    from vaelab.results.comparison import compare

    written = compare([sweep], tmp_path / "compare")
    # sorted by the test ELBO, best first, and filtered to latent size 3, from the address alone
    dom = render(written["html"], tmp_path, "#sort=test/elbo:desc&filter=z=3")
    loaded, total = loaded_images(dom)
    assert total == 4 * 3 + 4 and loaded == total  # samples, reconstructions, traversals of 4 runs; 4 plots
    with open(written["csv"], newline="") as handle:
        elbo = {
            f"β={float(r['beta']):g} z={r['latent_dim']} vae s0": float(r["test/elbo"]) for r in csv.DictReader(handle)
        }
    rows = re.findall(r"<tr( hidden=\"\")?><td>([^<]+)</td>", dom)
    shown = [label for hidden, label in rows if not hidden]
    assert sorted(shown) == ["β=1 z=3 vae s0", "β=4 z=3 vae s0"] and len(rows) == 4
    assert [elbo[label] for label in shown] == sorted((elbo[label] for label in shown), reverse=True)

    # the check can fail: a picture that does not decode is not counted as loaded
    broken = written["html"].with_name("broken.html")
    broken.write_text(written["html"].read_text().replace("base64,iVBOR", "base64,AAAA", 1))
    loaded, total = loaded_images(render(broken, tmp_path))
    assert loaded == total - 1

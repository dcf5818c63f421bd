"""scripts/bench.py's table logic (its timings are not tested: they belong to `make bench`)."""

import importlib.util
import subprocess
import sys

import pytest
import torch
from helpers import PROJECT_ROOT, child_env, python_cli

spec = importlib.util.spec_from_file_location("bench", PROJECT_ROOT / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def results(floor: float, overrides=()) -> dict:
    training = {
        "vaelab_lightning": 20_000,
        "plain_loop": 22_000,
        "plain_loop_fused_adam": 28_000,
        "torchvision_loader": 10_000,
        "compute_floor": floor,
        "a_over_b": 20 / 22,
        "a_over_b_fused": 20 / 28,
        "a_over_c": 2.0,
        "runs": {"a": [20_000]},
    }
    lockstep = {
        "a": 19_000,
        "b": 21_000,
        "b_fused": 27_000,
        "a_over_b": 19 / 21,
        "a_over_b_fused": 19 / 27,
        "plain_ms_per_step": 4.7,
        "overhead_ms_per_step": 2.0,
        "epochs": 2,
    }
    nll = {
        "k": 5000,
        "vaelab_images_per_second": 29.0,
        "bare_images_per_second": 26.0,
        "time_ratio_vaelab_over_bare": 0.9,
    }
    return {
        "command": "make bench",
        "machine": "2 CPU cores",
        "commit": "0123abc",
        "overrides": list(overrides),
        "training": training,
        "lockstep": lockstep,
        "lockstep_one_step_per_fetch": {
            **lockstep,
            "a": 15_000,
            "a_over_b_fused": 15 / 27,
            "overhead_ms_per_step": 3.8,
        },
        "nll": nll,
        "folder_lockstep": {"a": 2_700, "b_same": 2_900, "a_over_b_same": 27 / 29, "epochs": 2, "batch_size": 128},
        "iwae_mlp_lockstep": {"a": 20_000, "b_same": 25_000, "a_over_b_same": 0.8, "epochs": 2, "batch_size": 100},
        "throughput_callback": {"microseconds_per_step": 30.0, "fraction_of_lockstep_step": 0.0045},
        "step_profile": {
            "data fetch": 400.0,
            "callback NaNGuard": 120.0,
            "Lightning's loop (the rest)": 700.0,
            "step": 6400.0,
        },
        "hook_dispatch": {"vaelab_microseconds": 12.0, "lightning_microseconds": 95.0, "callbacks": 11},
        "startup_seconds": 0.3,
        "tiny_run": {"imports_seconds": 5.0, "tiny_run_seconds": 6.5, "extra": 1.5},
        "sweep": {"jobs": 8, "wall_seconds": 45.0, "fit_seconds": 30.0, "per_job_beyond_fit": 1.25},
    }


def test_table_gives_the_ratios_and_where_it_was_measured():
    table = bench.markdown_table(results(floor=65_000))
    assert table.startswith(bench.TABLE_START) and table.endswith(bench.TABLE_END)
    assert "| (a) vaelab through Lightning, `train.py`'s config | 19,000 | 20,000 |" in table
    assert "- (a)/(b) = **0.90** in lockstep, 0.91 alone." in table
    assert "| (a) with one optimizer step per Lightning step, `steps_per_fetch=1` | 15,000 | |" in table
    assert "`steps_per_fetch=1`, Lightning's automatic optimization): (a)/(b') = **0.56** in lockstep, 3.8 ms" in table
    assert "the hand-written loop (b') runs at 43% of the floor" in table
    assert table.splitlines()[-2].startswith("Measured by `make bench` on 2 CPU cores, vaelab 0123abc; lockstep")
    assert "`callbacks.throughput`: 30 µs per step in its hooks" in table and "= **0.45%** of (a)'s step" in table
    assert "| (a) on a folder of 32×32 RGB PNGs, `model/net=conv likelihood=discretized_logistic` | 2,700 | |" in table
    assert (
        "- IWAE-paper MLP: (a)/(b_same) = **0.80** in lockstep: vaelab adds 1.0 ms to the plain loop's 4.0 ms step."
        in table
    )
    assert "- Folder of RGB images: (a)/(b_same) = **0.93** in lockstep." in table
    assert '6.5 s against 5.0 s for `python -c "import lightning, torchvision, wandb, hydra"`: **1.5 s** more' in table
    assert "An 8-job in-process sweep of 1-epoch runs: 45 s, of which 30 s fitting; **1.25 s** per job" in table
    assert "on 11 callbacks and the module: **12 µs** per step as vaelab has Lightning call them" in table
    assert "against 95 µs through Lightning's own dispatch" in table
    assert "| callback NaNGuard | 120 |" in table and "| the whole step | 6,400 |" in table
    assert "target" not in table and "2026" not in table


def test_the_peer_rows_give_per_epoch_and_fixed_costs_and_the_speedups():
    peer = {
        "peer": {"one_epoch": 11.4, "three_epochs": 24.0, "per_epoch": 6.3, "fixed": 5.1},
        "vaelab": {"one_epoch": 11.5, "three_epochs": 19.9, "per_epoch": 4.2, "fixed": 7.3},
        "speedup_per_epoch": 1.5,
        "speedup_10_epochs": 1.386,
    }
    table = bench.markdown_table({**results(floor=65_000), "peer": peer})
    assert (
        "| pytorch/examples `vae/main.py`, as written (its epoch includes its test pass) | 11.4 | 24.0 | 6.30 | 5.1 |"
        in table
    )
    assert "vaelab is **1.50×** faster per epoch, and **1.39×** end to end for the 10-epoch default run" in table
    assert "vae/main.py" not in bench.markdown_table(results(floor=65_000))  # without --peer: no rows


def test_table_names_the_overrides_of_a():
    table = bench.markdown_table(results(floor=65_000, overrides=["compile=true"]))
    assert "(a) vaelab through Lightning, `train.py`'s config `compile=true` | 19,000 | 20,000 |" in table


def test_the_gpu_block_gives_the_overhead_and_where_it_was_measured():
    step = {"a": 90_000, "b": 70_000, "b_fused": 100_000, "a_over_b_fused": 0.9, "epochs": 2}
    step.update(plain_ms_per_step=1.28, overhead_ms_per_step=0.14)
    machine = "NVIDIA A100, torch 2.14.1, CUDA 13.0"
    table = bench.device_table(
        {"lockstep": step, "command": "python scripts/bench.py --device cuda", "machine": machine, "commit": "0123abc"}
    )
    assert table.startswith(bench.GPU_TABLE_START) and table.endswith(bench.GPU_TABLE_END)
    assert "| (a) vaelab through Lightning, data on the GPU | 90,000 |" in table
    assert "(a)/(b') = **0.90**: vaelab adds 0.14 ms to the plain loop's 1.28 ms step." in table
    assert "on NVIDIA A100, torch 2.14.1, CUDA 13.0, vaelab 0123abc" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the check runs in full (make gpu-check)")
def test_without_cuda_the_gpu_check_is_one_line_and_the_bench_one_error(tmp_path):
    check = subprocess.run(
        ["bash", str(PROJECT_ROOT / "scripts" / "gpu_check.sh")],
        env=child_env(PY=sys.executable),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr[-2000:]
    assert check.stdout.splitlines() == [
        "gpu_check: no CUDA device (torch.cuda.is_available() is False): nothing to check here"
    ]
    out = tmp_path / "bench-cuda.json"
    bench_run = python_cli(
        str(PROJECT_ROOT / "scripts" / "bench.py"), "--device", "cuda", "--out", str(out), env=child_env(), timeout=120
    )
    assert bench_run.returncode == 1
    assert bench_run.stderr.strip().splitlines()[-1].startswith("error: --device cuda: torch finds no CUDA device here")
    assert not out.exists()

"""Speed of vaelab against hand-written PyTorch, measured side by side in one process (`make bench`).

    python scripts/bench.py [--epochs 2] [--out logs/bench/bench.json] [--doc docs/benchmarks.md]

On the real MNIST training images, the 784-400-20 MLP VAE, batch 128, Adam, dynamic binarization:
  (a) vaelab: `train.py`'s own configuration (Lightning Trainer, callbacks, offline W&B logger)
      through `vaelab.training.train`, validation switched off so that only training steps are timed;
  (b) a plain PyTorch loop over in-memory tensors (the pytorch/examples VAE, batches sliced from
      one tensor) with torch's default Adam and torch.bernoulli, as one would write it;
  (b') the same loop with the fused Adam (`fused=True`) that vaelab's model configs use and
      vaelab's bit drawing (`vaelab.data.draw_bits`), so that (a)/(b') is the cost of Lightning
      and vaelab's training code alone;
  (c) the same loop fed by torchvision's MNIST dataset with a per-sample ToTensor transform and a
      DataLoader, as in pytorch/examples.
  IWAE-paper MLP: `experiment=iwae_paper_vae_mnist` (784-200-200-50, batch 100), where the maths
      is cheap and the overhead shows, in lockstep with (b_same), a plain loop over a copy of the
      same network and objective;
  folder: a generated folder of 10,000 32x32 RGB PNG files, the conv net and the discretized
      logistic: (a) against a plain loop over a copy of the same network and likelihood and the
      same cached tensors (b_same), in lockstep;
  floor: only the work every one of them must do per step in float32, the five 128x784x400
      matrix products (two forward, three backward) and one fused Adam update, so that the
      table says how fast any implementation of this step could be on the machine.
Images per second are counted after `--warmup` steps. Every training loop here, (a) and the plain
ones, runs with subnormal floats flushed to zero, as vaelab trains (`callbacks.flush_denormals`,
vaelab/denormals.py), or with neither when an override switches it off; pytorch/examples' script
(`--peer`) runs as written, in its own process. It also times the importance-sampled NLL
(k = 5000) of the IWAE-paper MLP through `vaelab.results.evaluation.evaluate_split` against the same
batched computation written out by hand, the start-up time of `python train.py --cfg job`, a tiny
run (one batch each of training, validation and test) against importing its libraries, the
seconds per job beyond its fit of an 8-job sweep of 1-epoch runs, and
where (a)'s step goes, part by part and callback by callback (Lightning's SimpleProfiler), and
the three hooks of an optimizer step through Lightning's dispatch and through vaelab's.
Results go to a JSON file and, with --doc, into that Markdown file between the bench markers.
`--override KEY=VALUE` (repeatable) passes Hydra overrides to (a), e.g. `--override compile=true`;
the document is then left alone. `--device cuda` (on a machine with CUDA; `scripts/gpu_check.sh`)
times (a) on the GPU with the data there, in lockstep with (b) and (b') on the same GPU, into
logs/bench/bench-cuda.json and the document's GPU block; the CPU table stays as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks package beside this file
import torch  # noqa: E402
from benchmarks import BATCH  # noqa: E402
from benchmarks.folder import bench_folder_lockstep  # noqa: E402
from benchmarks.nll import bench_nll  # noqa: E402
from benchmarks.peer import bench_peer  # noqa: E402
from benchmarks.plain import bench_compute_floor, bench_plain, bench_torchvision  # noqa: E402
from benchmarks.report import (  # noqa: E402
    GPU_TABLE_END,
    GPU_TABLE_START,
    TABLE_END,
    TABLE_START,
    device_table,
    markdown_table,
)
from benchmarks.through_vaelab import (  # noqa: E402
    bench_hook_dispatch,
    bench_lightning,
    bench_lockstep,
    bench_same_net,
    bench_step_profile,
    compose_train_config,
)
from benchmarks.whole_runs import bench_startup, bench_sweep, bench_tiny_run  # noqa: E402

from vaelab.errors import one_line_errors  # noqa: E402

IWAE_MLP = "experiment=iwae_paper_vae_mnist"  # 784-200-200-50, tanh, batch 100: cheap maths, overhead shows
from vaelab.runs import source_commit  # noqa: E402


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what Python's platform module says:
    tables from different CPUs of the same core count are then told apart."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("VAELAB_DATA_DIR", "data"))
    parser.add_argument("--epochs", type=int, default=2, help="training epochs for (a) and (b)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, interleaved; the best counts")
    parser.add_argument("--warmup", type=int, default=20, help="steps not timed")
    parser.add_argument("--torchvision-steps", type=int, default=300, help="steps of (c), which is slow")
    parser.add_argument("--nll-images", type=int, default=50)
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument(
        "--out",
        type=Path,
        help="the JSON file (default: logs/bench/bench.json, or logs/bench/bench-<overrides>.json with --override)",
    )
    parser.add_argument("--doc", type=Path, help="replace the table between the bench markers in this Markdown file")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override for (a), e.g. compile=true (repeatable; --doc is then left alone)",
    )
    parser.add_argument(
        "--peer",
        type=Path,
        help="pytorch/examples' vae/main.py: adds whole runs of it and of train.py at 1 and 3 epochs",
    )
    parser.add_argument("--device", default="cpu", help="cpu (every row), or cuda / cuda:N (the lockstep rows)")
    args = parser.parse_args()
    if args.device != "cpu":
        args.out = args.out or Path("logs") / "bench" / f"bench-{args.device.replace(':', '')}.json"
        with one_line_errors():
            measure_on_device(args)
        return
    if args.out is None:
        suffix = "".join(f"-{o}" for o in args.override).replace("/", "_")
        args.out = Path("logs") / "bench" / f"bench{suffix}.json"  # of the folder it runs in

    with one_line_errors():  # no MNIST, or a bad --override: one line that says what to fix
        measure(args)


def measure(args: argparse.Namespace) -> None:
    from vaelab.datasets import load_split
    from vaelab.denormals import flush_denormals

    cfg = compose_train_config(args.override)
    flushes = bool((cfg.get("callbacks") or {}).get("flush_denormals"))  # as (a)'s training does
    images, _, _ = load_split("mnist", args.data_root, train=True, download=False)
    a_runs, b_runs, bf_runs, c_runs, floor_runs = [], [], [], [], []
    for _ in range(args.repeats):  # interleaved, so that a slow spell of the machine hits all of them
        with tempfile.TemporaryDirectory() as work:
            a_runs.append(bench_lightning(args.data_root, args.epochs, args.warmup, Path(work), args.override))
        with flush_denormals(flushes):
            b_runs.append(bench_plain(images, args.epochs, args.warmup))
            bf_runs.append(bench_plain(images, args.epochs, args.warmup, fused=True))
            c_runs.append(bench_torchvision(args.data_root, args.torchvision_steps, args.warmup))
            floor_runs.append(bench_compute_floor())
    with tempfile.TemporaryDirectory() as work:
        lockstep = bench_lockstep(images, args.data_root, args.epochs, args.warmup, Path(work), args.override)
    with tempfile.TemporaryDirectory() as work:  # Lightning's automatic optimization, one step per fetch
        one_per_fetch = [*args.override, "steps_per_fetch=1"]
        lockstep_one = bench_lockstep(images, args.data_root, args.epochs, args.warmup, Path(work), one_per_fetch)
    with tempfile.TemporaryDirectory() as work:
        folder = bench_folder_lockstep(Path(work), args.epochs, args.warmup)
    with tempfile.TemporaryDirectory() as work:
        iwae_mlp = bench_same_net(args.data_root, args.epochs, args.warmup, Path(work), [IWAE_MLP])
    with tempfile.TemporaryDirectory() as work:
        # one step per fetch: Lightning's per-step parts, which a fetch of several steps pays once
        profile = bench_step_profile(args.data_root, 1, Path(work), ["steps_per_fetch=1"])
    with tempfile.TemporaryDirectory() as work:
        hook_dispatch = bench_hook_dispatch(args.data_root, Path(work))
    # the best of the repeats: the least disturbed by the other tenants of the machine
    a, b, bf, c = max(a_runs), max(b_runs), max(bf_runs), max(c_runs)
    results = {
        "command": "make bench"
        if not args.override
        else "python scripts/bench.py " + " ".join(f"--override {o}" for o in args.override),
        "overrides": args.override,
        "commit": source_commit() or "not a git checkout",
        "machine": f"{os.cpu_count()} CPU cores ({cpu_model()}, {platform.machine()}, "
        f"{torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, {torch.get_num_threads()} threads",
        "training": {
            "vaelab_lightning": a,
            "plain_loop": b,
            "torchvision_loader": c,
            "plain_loop_fused_adam": bf,
            "compute_floor": max(floor_runs),
            "a_over_b": a / b,
            "a_over_b_fused": a / bf,
            "a_over_c": a / c,
            "plain_ms_per_step": 1000 * BATCH / bf,
            "overhead_ms_per_step": 1000 * BATCH * (1 / a - 1 / bf),
            "epochs": args.epochs,
            "batch_size": BATCH,
            "warmup_steps": args.warmup,
            "runs": {"a": a_runs, "b": b_runs, "b_fused": bf_runs, "c": c_runs, "floor": floor_runs},
        },
        "lockstep": lockstep_ratios(lockstep, args.epochs),
        "lockstep_one_step_per_fetch": lockstep_ratios(lockstep_one, args.epochs),
        "folder_lockstep": {**folder, "epochs": args.epochs},
        "iwae_mlp_lockstep": {**iwae_mlp, "epochs": args.epochs},
        "step_profile": profile,
        "hook_dispatch": hook_dispatch,
        "throughput_callback": {
            "microseconds_per_step": profile["callback Throughput"],
            "fraction_of_lockstep_step": profile["callback Throughput"] / (1e6 * BATCH / lockstep["a"]),
        },
        "nll": bench_nll(args.data_root, args.nll_images, args.k),
        "startup_seconds": bench_startup(),
    }
    results["tiny_run"] = bench_tiny_run(args.data_root)
    results["sweep"] = bench_sweep(args.data_root, results["tiny_run"]["imports_seconds"])
    if args.peer:
        results["peer"] = bench_peer(args.peer, args.data_root)
        # where the reader's checkout is differs: name the script by its place in pytorch/examples
        results["command"] += f' ARGS="--peer <pytorch/examples>/{args.peer.parent.name}/{args.peer.name}"'
    else:
        print("whole runs against pytorch/examples' vae/main.py left out: give --peer path/to/vae/main.py")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    table = markdown_table(results)
    print(table)
    print(f"wrote {args.out}")
    if args.doc and args.override:
        print(f"{args.doc} left alone: its table is of train.py's own config, without overrides")
    elif args.doc:
        replace_block(args.doc, table, TABLE_START, TABLE_END)


def measure_on_device(args: argparse.Namespace) -> None:
    """(a) on the GPU (data on the device) in lockstep with (b) and (b') on the same GPU."""
    from vaelab.datasets import load_split
    from vaelab.errors import UserError

    if not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: torch finds no CUDA device here (torch.cuda.is_available() is False)")
    overrides = ["trainer.accelerator=gpu", "trainer.devices=1", "data.data_on_device=true", *args.override]
    compose_train_config(overrides)
    images, _, _ = load_split("mnist", args.data_root, train=True, download=False)
    with tempfile.TemporaryDirectory() as work:
        step = bench_lockstep(images, args.data_root, args.epochs, args.warmup, Path(work), overrides, args.device)
    results = {
        "command": "python scripts/bench.py --device "
        + args.device
        + "".join(f" --override {o}" for o in args.override),
        "commit": source_commit() or "not a git checkout",
        "machine": f"{torch.cuda.get_device_name(args.device)}, torch {torch.__version__}, CUDA {torch.version.cuda}",
        "lockstep": lockstep_ratios(step, args.epochs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    table = device_table(results)
    print(table)
    print(f"wrote {args.out}")
    if args.doc:
        replace_block(args.doc, table, GPU_TABLE_START, GPU_TABLE_END)


def lockstep_ratios(speeds: dict[str, float], epochs: int) -> dict[str, float]:
    """The lockstep images/s of (a), (b) and (b') with their ratios, (b')'s step and (a)'s overhead in ms."""
    return {
        **speeds,
        "a_over_b": speeds["a"] / speeds["b"],
        "a_over_b_fused": speeds["a"] / speeds["b_fused"],
        "plain_ms_per_step": 1000 * BATCH / speeds["b_fused"],
        "overhead_ms_per_step": 1000 * BATCH * (1 / speeds["a"] - 1 / speeds["b_fused"]),
        "epochs": epochs,
    }


def replace_block(doc: Path, table: str, start: str, end: str) -> None:
    """Put ``table`` (which begins with ``start`` and ends with ``end``) in place of that block of ``doc``."""
    text = doc.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"error: {doc} has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    doc.write_text(head + table + rest.split(end, 1)[1])
    print(f"updated {doc}")


if __name__ == "__main__":
    main()

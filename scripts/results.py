"""Train and evaluate the named recipes, and write their results table.

    python scripts/results.py cvae_mnist beta_vae_mnist      # or: make results RECIPES="..."
    python scripts/results.py --k 5000 --epochs 5 cvae_mnist  # shorter runs
    python scripts/results.py --k 1000 best_cpu_vae_mnist     # fewer importance samples
    python scripts/results.py --checkpoint best static_vae_mnist  # the best checkpoint on val/elbo

Each recipe runs as `python train.py experiment=<name>` in logs/results/<name>/, then
`python -m vaelab.evaluate ckpt=<run>/checkpoints/last.ckpt k=<k>` (or the best checkpoint); the table goes to
logs/results/results.md with the exact commands and wall times, and with --doc into that Markdown
file between the markers <!-- results:<block>:start --> and <!-- results:<block>:end -->.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str]) -> float:
    print("+", shlex.join(command), flush=True)
    started = time.perf_counter()
    code = subprocess.run(command, cwd=ROOT, stdin=subprocess.DEVNULL).returncode
    if code:  # the command has printed its own error above; stop with one line, not a traceback
        raise SystemExit(
            f"error: `{shlex.join(command)}` exited with code {code}; the recipes before it are in their folders"
        )
    return time.perf_counter() - started


def pick_checkpoint(folder: Path, which: str) -> Path:
    """``last.ckpt``, or the one ``best-epoch-NNN.ckpt`` that ModelCheckpoint kept (save_top_k=1)."""
    if which == "last":
        return folder / "last.ckpt"
    best = sorted(folder.glob("best-epoch-*.ckpt"))
    if len(best) != 1:
        raise SystemExit(f"error: expected one best-epoch-*.ckpt in {folder}, found {len(best)}")
    return best[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+", help="names of configs/experiment/*.yaml")
    parser.add_argument("--k", type=int, default=5000, help="importance samples for the NLL")
    parser.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs")
    parser.add_argument("--limit-images", type=int, default=None, help="score only the first N test images")
    parser.add_argument("--out", type=Path, default=Path("logs") / "results", help="(default: ./logs/results)")
    parser.add_argument(
        "--checkpoint",
        choices=("last", "best"),
        default="last",
        help="score the last checkpoint, or the best one on the validation ELBO",
    )
    parser.add_argument("--doc", type=Path, help="also replace the table between this file's results markers")
    parser.add_argument("--block", default="last", help="which results block of --doc (default: last)")
    args = parser.parse_args()
    args.out = args.out.resolve()  # the commands run in the source tree
    rows = []
    for name in args.recipes:
        run_dir = args.out / name
        overrides = [f"experiment={name}"] + ([f"trainer.max_epochs={args.epochs}"] if args.epochs else [])
        train_seconds = run(
            [sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false"]
        )
        ckpt = pick_checkpoint(run_dir / "checkpoints", args.checkpoint)
        eval_seconds = run(
            [sys.executable, "-m", "vaelab.evaluate", f"ckpt={ckpt}", f"k={args.k}"]
            + ([f"limit_images={args.limit_images}"] if args.limit_images else [])
        )
        results = json.loads(ckpt.with_suffix(".eval.json").read_text())
        rows.append((name, overrides, results, train_seconds, eval_seconds))
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    lines = [
        "| recipe | command | test NLL (k) | test ELBO | active units | CVAE class acc. | train time | eval time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    subset = f", first {args.limit_images} images" if args.limit_images else ""
    for name, overrides, r, train_s, eval_s in rows:
        accuracy = r.get("test/cvae_class_accuracy")
        lines.append(
            f"| {name} | `python train.py {' '.join(overrides)}` | {r['test/nll']:.2f} (k={r['test/k']}{subset}) | "
            f"{r['test/elbo']:.2f} | {r['test/active_units']} | {'' if accuracy is None else f'{accuracy:.2%}'} | "
            f"{train_s / 60:.1f} min | {eval_s / 60:.1f} min |"
        )
    lines.append(
        f"\nNats per image on the {rows[0][2].get('data', '')} test split. Measured by `python scripts/results.py` on "
        f"{machine}, torch {torch_version()}, vaelab {source_commit() or 'not a git checkout'}."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    table = "\n".join(lines)
    (args.out / "results.md").write_text(table + "\n")
    print(table)
    if args.doc:
        replace_block(args.doc, args.block, table)
        print(f"updated {args.doc}")


def torch_version() -> str:
    from importlib.metadata import version

    return version("torch")


def source_commit() -> str | None:
    from vaelab.runs import source_commit as commit

    return commit()


def replace_block(doc: Path, block: str, table: str) -> None:
    """Put table between doc's <!-- results:<block>:start --> and <!-- results:<block>:end --> markers."""
    start, end = f"<!-- results:{block}:start -->", f"<!-- results:{block}:end -->"
    text = doc.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"error: {doc} has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    doc.write_text(f"{head}{start}\n{table}\n{end}{rest.split(end, 1)[1]}")


if __name__ == "__main__":
    main()

"""``vaelab-compare PATH [PATH ...] [--out DIR]``: the runs table, plots and HTML report of
``vaelab.results.comparison`` over run folders, or folders above them (a multirun folder)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vaelab.errors import one_line_errors
from vaelab.results.comparison import compare


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="vaelab-compare",
        description="Compare vaelab runs: a table of final metrics (nats per image), rate-distortion, metrics "
        "against the latent size, training curves, and one HTML report.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run folders, or folders above them (a multirun folder)")
    parser.add_argument(
        "--out", type=Path, help="where to write (default: <PATH>/compare for one PATH, else ./compare)"
    )
    args = parser.parse_args(argv)
    out = args.out or (args.paths[0] / "compare" if len(args.paths) == 1 else Path("compare"))
    # the default <PATH>/compare is made without following a symlink there: PATH may be from elsewhere
    root = args.paths[0] if args.out is None and len(args.paths) == 1 else out
    with one_line_errors():
        written = compare(args.paths, out, root=root)
    print(
        f"compared {written['count']} runs; wrote {written['html']} and {out}/runs.{{csv,md}}, "
        f"rate_distortion.png, pareto_front.png, metrics_vs_latent.png, curves.png"
    )


if __name__ == "__main__":
    main(sys.argv[1:])

"""`make bench`'s measurements, one file per path timed (see scripts/bench.py for what they are).

- plain.py: the hand-written loops (b), (b') and (c), and the compute floor;
- through_vaelab.py: (a), vaelab through Lightning, alone, in lockstep and profiled;
- folder.py: a folder of RGB images with the conv net, against the same network in a plain loop;
- whole_runs.py: start-up, a tiny run against its imports, and the per-job cost of a sweep;
- nll.py: the importance-sampled NLL through vaelab and by hand;
- report.py: the README table.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))  # vaelab from this source tree

BATCH = 128  # images per training step, every path

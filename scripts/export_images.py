"""Write MNIST or Fashion-MNIST out as a folder of PNG files, one subfolder per class: a real folder
of images for `data=folder` (docs/your-own-data.md's worked example).

    python scripts/export_images.py fashion_mnist /tmp/fashion-png             # all 70,000 images
    python scripts/export_images.py mnist /tmp/mnist-png --split test          # the 10,000 test images

Files are <out>/<class>/<split>-<index>.png (a class name's "/" written as "_"); the data root is
$VAELAB_DATA_DIR, else --root. An existing file is left as it is, so a second run adds nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def export(name: str, root: str, out: Path, splits: list[str]) -> int:
    """Write each image of ``splits`` of data set ``name`` as a grey PNG; returns the number written."""
    from torchvision.io import write_png

    from vaelab.datasets import load_split

    written = 0
    for split in splits:
        images, labels, classes = load_split(name, root, train=split == "train", download=False)
        folders = [out / c.replace("/", "_") for c in classes]
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        for index, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
            path = folders[label] / f"{split}-{index:05d}.png"
            if not path.exists():
                write_png(image.unsqueeze(0), str(path))
                written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=["mnist", "fashion_mnist"])
    parser.add_argument("out", type=Path, help="the folder to write (made when missing)")
    parser.add_argument("--split", choices=["train", "test", "both"], default="both")
    parser.add_argument("--root", default=os.environ.get("VAELAB_DATA_DIR", "data"), help="the IDX files' root")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    splits = ["train", "test"] if args.split == "both" else [args.split]
    written = export(args.name, args.root, args.out, splits)
    print(f"wrote {written} PNG files under {args.out}")


if __name__ == "__main__":
    main()

"""Write a class-balanced subset of an ImageFolder archive (the first N images per class of each split).

    python scripts/make_subset.py SRC DEST --train-per-class N --test-per-class M   (0 = every image)

Used for the GPU machine, which receives at most 64 MiB of files (examples/gpu/gpu_ray_check.sh):
    python scripts/make_subset.py ../shared/data/cifar10-jpg.tar.gz .devdata/cifar10-10k.tar.gz \
        --train-per-class 1000 --test-per-class 0
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data import write_subset  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src")
    p.add_argument("dest")
    p.add_argument("--train-per-class", type=int, required=True)
    p.add_argument("--test-per-class", type=int, required=True)
    a = p.parse_args()
    Path(a.dest).parent.mkdir(parents=True, exist_ok=True)
    out = write_subset(a.src, a.dest, a.train_per_class, a.test_per_class)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()

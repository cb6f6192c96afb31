"""The benchmark suite: a thin entry point over ``unet_resnet.benchmark`` (also `make bench`).

python benchmarks/run.py [--only inference training data tiling] [--compile] [--quick]
"""

import sys

from unet_resnet.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["benchmark", *sys.argv[1:]]))

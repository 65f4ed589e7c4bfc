"""Molecular dynamics of water with the trained model (NVE and Langevin): ``md.py --molecule water``.

    python examples/md_water.py --steps 200 --out out_md
"""
import sys

from md import main

if __name__ == "__main__":
    sys.exit(main(["--molecule", "water", *sys.argv[1:]]))

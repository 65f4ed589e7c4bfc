"""Molecular dynamics of ethanol with the trained model (NVE and Langevin): ``md.py --molecule ethanol``.

    python examples/md_ethanol.py --steps 200 --out out_md
"""
import sys

from md import main

if __name__ == "__main__":
    sys.exit(main(["--molecule", "ethanol", *sys.argv[1:]]))

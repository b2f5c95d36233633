"""`yxanul-ray compare`, as a file for `ray job submit ... -- python jobs/compare_curricula.py CONFIG
[flags]`: the curriculum against flat training and other arms (see `yxanul-ray compare --help`)."""

import sys

from yxanul_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))

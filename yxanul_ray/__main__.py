"""`python -m yxanul_ray COMMAND ...`: the `yxanul-ray` command line."""

import sys

from yxanul_ray.cli import main

if __name__ == "__main__":
    sys.exit(main())

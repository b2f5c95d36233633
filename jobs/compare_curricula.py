"""Entrypoint for `ray job submit --working-dir . -- python jobs/compare_curricula.py CONFIG [flags]`:
`yxanul-ray compare` (the curriculum against flat training and other arms; see its --help)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from yxanul_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))

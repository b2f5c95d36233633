"""The user's `test_curriculum_streaming.py`, done properly: `python jobs/check_streaming.py
[--config CONFIG] [--test-all | --stage N | --test-transitions] [--sample N] [--estimate] [--json]`.
No flag tests the first and last stages. Exit code 0 only when every check passes."""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from yxanul_ray.cli import add_check_args, cmd_check, reporting_errors  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_check_args(ap, config_optional=True)
    args = ap.parse_args(argv)
    return reporting_errors(lambda: cmd_check(args))


if __name__ == "__main__":
    sys.exit(main())

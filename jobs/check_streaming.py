"""`yxanul-ray check`, as a file for `ray job submit ... -- python jobs/check_streaming.py
[--config CONFIG] [--test-all | --stage N | --test-transitions] [--sample N] [--estimate] [--json]`:
every source streams, each stage's mix and transitions. No flag checks the first and last
stages. Exit code 0 only when every check passes."""

import sys

from yxanul_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["check", *sys.argv[1:]]))

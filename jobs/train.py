"""`yxanul-ray train`, as a file for `ray job submit --runtime-env configs/runtime_env.yaml --
python jobs/train.py --config configs/demo.yaml` (Ray puts the working dir on the path).

Takes what `yxanul-ray train` takes, the user's original flags among them: `--curriculum`,
`--model-size 270M`, `--target-tokens N`, `--curriculum-config PATH`, and `--resume CHECKPOINT`
alone (the checkpoint's own settings).
"""

import sys

from yxanul_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

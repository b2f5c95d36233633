import sys

from yxanul_ray.cli import main

sys.exit(main())

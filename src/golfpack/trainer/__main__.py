"""`torchrun --nproc_per_node=N -m golfpack.trainer --config ...`: one process per rank."""

import sys

from golfpack.cli.train import main

sys.exit(main())

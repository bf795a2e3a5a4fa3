"""`torchrun --nproc_per_node=N -m golfpack.evaluator CKPT --val ... --tokenizer ...`: one process per rank."""

import sys

from golfpack.evaluator.cli import main

sys.exit(main())

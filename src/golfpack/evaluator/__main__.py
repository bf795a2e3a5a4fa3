"""`torchrun --nproc_per_node=N -m golfpack.evaluator CKPT --val ... --tokenizer ...`: one process per rank."""

import sys

from golfpack.cli.eval import main

sys.exit(main())

"""``python -m decaf_lora`` is the ``decaf`` command; under torchrun: ``torchrun --standalone --nproc-per-node P -m
decaf_lora train ...`` spreads the agents over P processes."""

import sys

from .cli import main

sys.exit(main())

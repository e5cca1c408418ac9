"""`python -m minirlhf ...` is the same as the `minirlhf` command (and what torchrun launches)."""

import sys

from minirlhf.cli import main

sys.exit(main())

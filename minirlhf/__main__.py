"""`python -m minirlhf ...` is the same as the `minirlhf` command (and what torchrun launches)."""

from minirlhf.cli import entry

entry()

"""`python -m toolkit` (and `torchrun -m toolkit`) run the `rtk` command line."""

from .cli import main

main(prog_name="rtk")

"""``python -m ppaia``: the command line (used to start peer processes with this interpreter)."""

from ppaia.cli.main import main

main()

"""`python -m dagnats.cli`: the `dagnats` command."""

from dagnats.cli import main

main()

"""`python -m visiondeck` is the same as the `visiondeck` command."""

from visiondeck.cli import main

main()

"""`python -m pipeline` runs the `memory` command."""

from .cli import main

main()

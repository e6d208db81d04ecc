"""`python -m pipeline` runs the `memory` command."""

from .cli import main

if __name__ == "__main__":      # not when a worker process is started by spawning (macOS, Windows)
    main()

"""`python -m vaelab` runs the command line (torchrun starts modules this way)."""

from .cli import main

if __name__ == "__main__":
    main()

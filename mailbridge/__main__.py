"""`python -m mailbridge` runs the command line."""

from mailbridge.cli import main

if __name__ == "__main__":
    main()

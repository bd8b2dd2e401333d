"""`python -m saehealth ...` (and `torchrun -m saehealth ...`): the same command line as `saehealth`."""

from saehealth.cli import main

if __name__ == "__main__":
    main()

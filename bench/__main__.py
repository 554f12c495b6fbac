"""`python -m bench [--quick | --smoke] ...` (from the repository root): see bench/run.py."""

from bench.run import main

main()

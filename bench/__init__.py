"""The benchmark (`make bench`, `python -m bench` from the repository root): a tool beside the
library, not part of it. run.py: the sections and the command line; data.py: the data section.
Results land in bench/results/ (latest.json, latest.md, <date>-<host>.json)."""

"""The benchmark (`make bench`, `python -m bench` from the repository root): a tool beside the
library, not part of it. run.py: the command line; measure, contenders, steps, evaluation, data:
the sections; report: the markdown table.
Results land in bench/results/ (latest.json, latest.md, <date>-<host>.json)."""

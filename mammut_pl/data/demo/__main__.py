"""`python -m mammut_pl.data.demo --out DIR`: write the demo world."""

from mammut_pl.data.demo import main

main()

"""`python -m rayleigh_loadtest load ...`: the same as `rayleigh bench load ...`."""

from rayleigh_loadtest.cli import main

main()

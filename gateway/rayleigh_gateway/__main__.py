"""`python -m rayleigh_gateway gateway|keys ...` (the same commands as `rayleigh gateway|keys`)."""

from rayleigh_gateway.cli import main

main()

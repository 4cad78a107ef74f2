"""`python -m hw2rt` (and `torchrun -m hw2rt`): the hw2rt command."""
from hw2rt.cli import main

main()

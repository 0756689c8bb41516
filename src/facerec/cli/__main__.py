"""`python -m facerec.cli ...` is `facerec ...` (worker subprocesses use it)."""

from facerec.cli import main

main()

"""`python -m facerec ...` is `facerec ...`."""

from facerec.cli import main

main()

"""`python -m miniagent.cli`."""

from . import main

main()

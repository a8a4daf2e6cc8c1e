"""``python -m scalenas.cli`` (what torchrun runs): the same as the ``scalenas`` command."""
import sys

from scalenas.cli.main import main

sys.exit(main())

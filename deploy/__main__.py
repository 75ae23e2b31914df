"""``python -m deploy export|serve|predict ...`` (the lead wires the same into ``chainpress``)."""
import sys

from .cli import main

sys.exit(main())

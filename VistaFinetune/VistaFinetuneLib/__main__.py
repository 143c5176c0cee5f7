"""``python -m VistaFinetuneLib``: the same command-line interface as ``vista-finetune``."""

import sys

from .cli import main

sys.exit(main())

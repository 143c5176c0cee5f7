"""``python -m VistaFinetuneLib``: the same command-line interface as ``vista-finetune``."""

import sys

from VistaFinetuneLib.cli import main

sys.exit(main())

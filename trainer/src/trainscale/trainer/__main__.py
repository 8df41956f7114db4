"""``python -m trainscale.trainer``: the same as the ``trainscale-train`` command."""

import sys

from trainscale.trainer.launch.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m compresslab.cli``: the same as the ``compresslab`` command."""
import sys

from compresslab.cli import main

sys.exit(main())

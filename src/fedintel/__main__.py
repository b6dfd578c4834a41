"""``python -m fedintel``: the same CLI as the ``fedintel`` command."""

import sys

from fedintel.cli import main

sys.exit(main())

"""``python -m simclrv2`` (what ``torchrun ... -m simclrv2`` runs)."""

import sys

from simclrv2.cli import main

sys.exit(main())

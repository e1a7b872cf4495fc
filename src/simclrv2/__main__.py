"""``python -m simclrv2`` (what ``torchrun ... -m simclrv2`` runs)."""

import sys

from simclrv2.launch import main

sys.exit(main())

"""``python -m simclrv2`` (what ``torchrun ... -m simclrv2`` runs)."""

import sys

try:
    from simclrv2.cli import main
except KeyboardInterrupt:  # Ctrl-C while torch is still being imported
    print("simclrv2: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())

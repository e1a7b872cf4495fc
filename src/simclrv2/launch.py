"""The ``simclrv2`` command: Ctrl-C while torch is still being imported also ends as one line."""

import sys


def main() -> int:
    try:
        from simclrv2.cli import main as cli_main
    except KeyboardInterrupt:
        print("simclrv2: interrupted", file=sys.stderr)
        return 130
    return cli_main()

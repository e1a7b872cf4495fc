"""The ``simclrv2`` command: Ctrl-C while torch is still being imported also ends as one line."""

import signal
import sys


def main() -> int:
    interrupted = False

    def on_interrupt(signum, frame):
        nonlocal interrupted
        interrupted = True
        raise KeyboardInterrupt

    # Some library imports swallow KeyboardInterrupt in a bare ``except``; the flag still sees it.
    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        from simclrv2.cli import main as cli_main
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        print("simclrv2: interrupted", file=sys.stderr)
        return 130
    return cli_main()

"""The ``simclrv2`` entry point: Ctrl-C while the command is still importing ends as one line, exit 130,
even when the interrupt lands in a library import that swallows ``KeyboardInterrupt``."""

from __future__ import annotations

import builtins
import os
import signal

from simclrv2 import launch


def _interrupt_while_importing_cli(monkeypatch, swallow: bool) -> None:
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "simclrv2.cli":
            try:
                os.kill(os.getpid(), signal.SIGINT)  # delivered here, in the middle of the import
            except KeyboardInterrupt:
                if not swallow:
                    raise
                # a library's bare ``except:`` around an optional import
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_interrupt_during_import_is_one_line_and_130(monkeypatch, capsys):
    _interrupt_while_importing_cli(monkeypatch, swallow=False)
    assert launch.main() == 130
    assert capsys.readouterr().err == "simclrv2: interrupted\n"


def test_interrupt_swallowed_by_an_import_still_stops(monkeypatch, capsys):
    _interrupt_while_importing_cli(monkeypatch, swallow=True)
    assert launch.main() == 130
    assert capsys.readouterr().err == "simclrv2: interrupted\n"


def test_the_handler_is_restored(monkeypatch):
    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr("simclrv2.cli.main", lambda: 0)
    assert launch.main() == 0
    assert signal.getsignal(signal.SIGINT) is before

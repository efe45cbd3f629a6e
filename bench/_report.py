"""Printing a benchmark's table at the end of the session, past pytest's output capture."""

from __future__ import annotations


def write_report(config, lines: list[str]) -> None:
    """Teardown output is captured (at the fd level) and dropped for passing tests: write it through
    the terminal reporter with capture suspended."""
    plugins = config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n".join(lines))

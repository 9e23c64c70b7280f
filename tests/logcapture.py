"""Capturing what a stage logs, for tests (imported by name: pytest puts tests/ on sys.path)."""

import logging


class LineLog(logging.Logger):
    """A ``logging.Logger`` that keeps every message as one line in ``.lines`` (pass it as a stage's ``log``)."""

    def __init__(self, name: str = "test") -> None:
        super().__init__(name, logging.DEBUG)
        self.lines: list[str] = []

    def handle(self, record: logging.LogRecord) -> None:
        self.lines.extend(record.getMessage().splitlines() or [""])

"""Periodic progress lines (no terminal tricks: readable in logs and CI)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, every_s: float = 5.0, stream=None, enabled: bool = True):
        self.every_s, self.stream, self.enabled = every_s, stream or sys.stderr, enabled
        self._last = 0.0
        self.prefix = ""

    def __call__(self, fraction: float, message: str, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.every_s and fraction < 1.0):
            return
        self._last = now
        print(f"[fusepot] {self.prefix}{message} ({100 * fraction:5.1f}%)", file=self.stream, flush=True)

    def line(self, message: str) -> None:
        if self.enabled:
            print(f"[fusepot] {message}", file=self.stream, flush=True)

"""Logging for Lamina's processes: one format, on stderr (make up sends it to var/log/)."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per request to an agent is noise; errors still surface through Lamina's logs.
    logging.getLogger("httpx").setLevel(logging.WARNING)

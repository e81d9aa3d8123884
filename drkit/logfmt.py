"""Log formatting: ``--log-format json`` gives one JSON object per line (for Loki)."""

from __future__ import annotations

import json
import logging
import time


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: ts, level, logger, msg, and extra fields."""

    _skip = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._skip and not key.startswith("_"):
                data[key] = value
        if record.exc_text:  # already formatted (and redacted by drkit.redact)
            data["exc"] = record.exc_text
        elif record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack"] = record.stack_info
        from drkit.redact import redact

        return redact(json.dumps(data, default=str))

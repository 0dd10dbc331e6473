"""One JSON object per log line, for log shippers (configured in deploy/dagster.yaml).

Dagster's structured fields (run id, step key, event type) are kept when present; a message that
is already JSON (the job queue's lines) is merged in rather than nested as a string.
"""

import json
import logging

_DAGSTER_FIELDS = ("run_id", "job_name", "step_key", "dagster_event_type")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
        }
        meta = getattr(record, "dagster_meta", None) or {}
        for key in _DAGSTER_FIELDS:
            value = meta.get(key) or getattr(record, key, None)
            if value:
                doc[key] = str(value)
        message = record.getMessage()
        try:
            parsed = json.loads(message)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            doc.update(parsed)
        else:
            doc["message"] = meta.get("orig_message") or message
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)

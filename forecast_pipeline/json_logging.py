"""One JSON object per log line, for log shippers; the project's one logging style.

Library code logs with ``logging.getLogger(__name__)``, Dagster code with ``context.log`` (or
``get_dagster_logger()``). A record's structured fields travel as a dict on the record
(``log.info("Job claimed", extra={FIELDS: {...}})``) and :class:`JsonFormatter` writes them as
top-level keys: they are serialised once, here, never encoded into the message and parsed back.

Where the formatter is configured, once per process:

- in a Dagster run, by the instance: ``python_logs`` in ``deploy/dagster.yaml`` routes the
  ``forecast_pipeline`` loggers into the run's logs and gives its handler this formatter;
- everywhere else the code location runs (sensors and schedules in the code server) and in the
  ``forecast-pipeline`` CLI, by :func:`log_json_lines`, called from ``definitions.py`` and the CLI's
  entry point. Its handler stays quiet for records a Dagster run is capturing, so no line is
  written twice.
"""

import json
import logging
import sys

FIELDS = "fields"
"""The ``extra`` key whose dict becomes the JSON object's own keys."""
ROOT = "forecast_pipeline"
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
        doc["message"] = meta.get("orig_message") or record.getMessage()
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class _NotCapturedByDagster(logging.Filter):
    """Drops records of a logger a Dagster run is capturing: its own handlers write them."""

    def filter(self, record: logging.LogRecord) -> bool:
        logger = logging.getLogger(ROOT)
        return not any(type(h).__name__ == "DagsterLogHandler" for h in logger.handlers)


class _JsonLinesHandler(logging.StreamHandler):
    """Writes to the stream it was given or, given none, to whatever ``sys.stderr`` is when a
    record comes: the handler is added once per process, and a process that swaps stderr (pytest's
    capture, a daemon redirecting it) would otherwise keep writing to a closed stream. A stream set
    later with ``setStream`` is kept until the stderr it replaced is set back."""

    def __init__(self, stream=None) -> None:
        super().__init__(stream or sys.stderr)
        self._stderr = None if stream else self.stream  # the stderr it writes to, while it follows it

    def _follow_stderr(self) -> None:
        current = sys.stderr  # None in a process detached from any stderr: keep the old stream
        following = self._stderr is not None and self.stream is self._stderr
        if following and current is not None and current is not self._stderr:
            self.stream = self._stderr = current

    def emit(self, record: logging.LogRecord) -> None:
        self._follow_stderr()
        super().emit(record)

    def setStream(self, stream):  # noqa: N802 (logging's name)
        with self.lock:  # reentrant: the base class takes it again
            self._follow_stderr()  # the stream it replaces (and flushes) is the stderr of the moment
            return super().setStream(stream)


def log_json_lines(level: int = logging.INFO, stream=None) -> logging.Handler:
    """Write the ``forecast_pipeline`` loggers' records as JSON lines on ``stream`` (stderr);
    idempotent: the handler is added once per process. Returns it."""
    logger = logging.getLogger(ROOT)
    for handler in logger.handlers:
        if isinstance(handler, _JsonLinesHandler):
            return handler
    handler = _JsonLinesHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_NotCapturedByDagster())
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    return handler

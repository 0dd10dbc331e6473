"""The one logging style: library records with structured fields, written as JSON lines once."""

import io
import json
import logging
import sys

from dagster import DagsterEventType, asset, instance_for_test, materialize

from forecast_pipeline.json_logging import FIELDS, JsonFormatter, log_json_lines

log = logging.getLogger("forecast_pipeline.test_json_logging")


def record(message, **extra):
    return log.makeRecord(log.name, logging.INFO, __file__, 1, message, (), None, extra=extra)


def test_fields_become_top_level_keys_and_a_message_is_never_parsed():
    formatter = JsonFormatter()
    doc = json.loads(formatter.format(record("Job claimed", **{FIELDS: {"job_id": 7, "from": "2025-11-03"}})))
    assert doc["message"] == "Job claimed" and doc["job_id"] == 7 and doc["from"] == "2025-11-03"
    assert doc["level"] == "INFO" and doc["logger"] == log.name
    # text that happens to be JSON stays text: nothing is decoded from a message
    doc = json.loads(formatter.format(record('{"job_id": 8}')))
    assert doc["message"] == '{"job_id": 8}' and "job_id" not in doc


def test_a_run_captures_library_records_and_the_process_handler_writes_them_once():
    handler = log_json_lines()
    assert log_json_lines() is handler  # configured once per process
    stream = io.StringIO()
    previous = handler.setStream(stream)

    @asset
    def logs_from_the_library():
        log.info("inside the run", extra={FIELDS: {"rows": 3}})

    try:
        overrides = {"python_logs": {"managed_python_loggers": ["forecast_pipeline"]}}
        with instance_for_test(overrides=overrides) as instance:
            result = materialize([logs_from_the_library], instance=instance)
            assert result.success
            logged = [
                r.event_log_entry.user_message
                for r in instance.get_records_for_run(result.run_id).records
                if r.event_log_entry.dagster_event is None
                or r.event_log_entry.dagster_event.event_type != DagsterEventType.STEP_OUTPUT
            ]
        log.info("outside any run", extra={FIELDS: {"rows": 4}})
    finally:
        handler.setStream(previous)
    assert "inside the run" in logged  # in the run's own logs (dagster.yaml's python_logs formats it)
    docs = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(d["message"], d["rows"]) for d in docs if d["logger"] == log.name] == [("outside any run", 4)]


def test_the_process_handler_writes_to_the_stderr_of_the_moment(monkeypatch):
    # added once per process: a later swap of stderr (pytest's capture, a redirect) must not leave
    # it writing to the old, closed stream ("--- Logging error ---" and the record lost)
    handler = log_json_lines()
    before = io.StringIO()
    monkeypatch.setattr(sys, "stderr", before)
    log.info("first")
    before.close()
    after = io.StringIO()
    monkeypatch.setattr(sys, "stderr", after)
    log.info("second", extra={FIELDS: {"rows": 2}})
    docs = [json.loads(line) for line in after.getvalue().splitlines()]
    assert [(d["message"], d["rows"]) for d in docs if d["logger"] == log.name] == [("second", 2)]
    assert handler.stream is after


def test_the_process_handler_keeps_its_stream_when_the_process_has_no_stderr(monkeypatch):
    handler = log_json_lines()
    kept = io.StringIO()
    monkeypatch.setattr(sys, "stderr", kept)
    log.info("before")
    monkeypatch.setattr(sys, "stderr", None)  # e.g. a process started without one
    log.info("detached", extra={FIELDS: {"rows": 5}})
    assert handler.stream is kept
    docs = [json.loads(line) for line in kept.getvalue().splitlines()]
    assert [d["message"] for d in docs if d["logger"] == log.name] == ["before", "detached"]

"""Long commands show progress on stderr: a bar on a terminal, plain periodic lines otherwise."""

import io
import os
import pty

import pytest

from forecast_pipeline.cli.progress import Progress
from forecast_pipeline_tests.conftest import BIN, command

CLI = str(BIN / "forecast-pipeline")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_without_a_terminal_a_line_at_most_every_interval_and_one_at_the_end():
    out, clock = io.StringIO(), Clock()
    progress = Progress("load", 100, "rows", stream=out, every=10, tty=False, clock=clock)
    for now, done in [(0, 1), (1, 5), (9, 20), (11, 40), (12, 50), (25, 90), (26, 100)]:
        clock.now = now
        progress(done, 100)
    progress.finish()
    assert out.getvalue().splitlines() == [
        "load: 1% (1/100 rows, 0s)",
        "load: 40% (40/100 rows, 11s)",
        "load: 90% (90/100 rows, 25s)",
        "load: 100% (100/100 rows, 26s)",
    ]


def test_without_a_terminal_the_final_state_is_printed_once():
    out, clock = io.StringIO(), Clock()
    progress = Progress("backtest", 4, "origins", stream=out, every=10, tty=False, clock=clock)
    for now, done in [(0, 0), (20, 2), (40, 4)]:
        clock.now = now
        progress(done, 4)
    clock.now = 41
    progress.finish()
    assert out.getvalue().splitlines() == [
        "backtest: 0% (0/4 origins, 0s)",
        "backtest: 50% (2/4 origins, 20s)",
        "backtest: 100% (4/4 origins, 40s)",
    ]


def test_the_share_is_rounded_down_so_100_percent_means_done():
    out = io.StringIO()
    Progress("fits", 611, stream=out, tty=False)(608, 611)
    assert out.getvalue() == "fits: 99% (608/611, 0s)\n"


def test_on_a_terminal_one_bar_redrawn_in_place():
    out, clock = io.StringIO(), Clock()
    progress = Progress("load", 4, "origins", stream=out, tty=True, clock=clock)
    for step in range(1, 5):
        clock.now = step
        progress(step, 4)
    progress.finish()
    text = out.getvalue()
    assert "\n" not in text[:-1] and text.endswith("\n")  # one line, redrawn with carriage returns
    assert text.count("\r") == 5
    assert "\rload [##############################] 100% 4/4 origins, 4s" in text


def _on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """Run a command with its stdout and stderr on a pseudo-terminal; returns what it wrote."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execve(args[0], args, env)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.integration
def test_demo_data_reports_its_stages_and_load_progress(tmp_path):
    url = f"sqlite:///{tmp_path / 'orders.sqlite'}"
    done = command([CLI, "demo-data", "--products", "200", "--as-of", "2025-11-10"], tmp_path, DATABASE_URL=url)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("demo-data: generating 200 products' order history")
    assert lines[1].startswith("demo-data: generated ") and "order lines in" in lines[1]
    assert lines[-1].startswith(f"demo-data: loading into {url}: 100% (") and " rows, " in lines[-1]
    assert "\r" not in done.stderr  # no bar when stderr is not a terminal
    assert done.stdout.startswith("Loaded ")  # stdout keeps the result alone

    env = {**os.environ, "DATABASE_URL": url, "DAGSTER_HOME": str(tmp_path)}
    shown = _on_a_terminal([CLI, "demo-data", "--products", "200", "--as-of", "2025-11-10"], env)
    assert f"\rdemo-data: loading into {url} [" in shown and "100% " in shown, shown[-2000:]


@pytest.mark.integration
def test_backtest_reports_its_stages_and_origins(tmp_path):
    done = command(
        [CLI, "backtest", "--products", "150", "--origins", "2", "--hw-sample", "3", "--no-real"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("backtest: generating 150 demo products' history")
    assert any(line.startswith("backtest: 150 products x ") for line in lines)
    ready = next(i for i, line in enumerate(lines) if line.startswith("backtest: 150 products x "))
    # at once, not after the first origin: the count is of series fitted, engine chunks and
    # Holt-Winters fits alike, at most every 10 s when not on a terminal
    assert lines[ready + 1].startswith("backtest: 150 demo products (2 origins): 0% (0/"), lines
    assert lines[-1].startswith("backtest: 150 demo products (2 origins): 100% ("), lines
    assert " series fits, " in lines[-1], lines
    assert len([line for line in lines if "100% (" in line]) == 1, lines  # the final line once

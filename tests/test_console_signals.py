"""The CLI's signal handling (console.py), in real child processes sending themselves signals."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

PREAMBLE = """
import os, signal, sys, time
from metacpo_rllib import console
"""


def _run(body: str, timeout: float = 60) -> subprocess.CompletedProcess:
    code = PREAMBLE + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_deferred_block_finishes_before_the_interrupt(sig) -> None:
    """A signal inside deferred_interrupts() is acted on when the block ends, not inside it."""
    result = _run(f"""
        steps = []
        try:
            with console.signal_handlers():
                with console.deferred_interrupts():
                    os.kill(os.getpid(), {int(sig)})
                    time.sleep(0.2)
                    steps.append("block finished")
                steps.append("after the block")
        except KeyboardInterrupt as err:
            print(steps, type(err).__name__, console.exit_code(err))
    """)
    name = "KeyboardInterrupt" if sig == signal.SIGINT else "Terminated"
    assert result.stdout.split() == ["['block", "finished']", name, str(128 + sig)], result


def test_a_second_signal_inside_a_deferred_block_acts_at_once() -> None:
    result = _run("""
        steps = []
        try:
            with console.signal_handlers():
                with console.deferred_interrupts():
                    os.kill(os.getpid(), signal.SIGTERM)
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.2)
                    steps.append("block finished")
        except KeyboardInterrupt as err:
            print(len(steps), console.exit_code(err))
    """)
    assert result.stdout.split() == ["0", "143"], result


def test_an_interrupt_whose_unwinding_hangs_exits_after_the_limit() -> None:
    """Cleanup that never ends (here: a sleep in the except block) does not keep the
    process alive: the watchdog exits with 128 + signal after UNWIND_LIMIT_S."""
    start = time.monotonic()
    result = _run("""
        console.UNWIND_LIMIT_S = 1.0
        try:
            with console.signal_handlers():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(30)
        except KeyboardInterrupt:
            time.sleep(30)  # a cleanup that hangs
        print("not reached")
    """)
    assert result.returncode == 130, result
    assert "not reached" not in result.stdout
    assert "shutting down took more than 1 s" in result.stderr
    assert "most recent call first" in result.stderr  # where it waited: the stacks
    assert time.monotonic() - start < 20


def test_outside_signal_handlers_a_deferred_sigterm_ends_the_process_the_default_way() -> None:
    result = _run("""
        with console.deferred_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            print("block finished", flush=True)
        print("not reached", flush=True)
    """)
    assert result.returncode == -signal.SIGTERM, result
    assert result.stdout.splitlines() == ["block finished"], result
    assert "not reached" not in result.stdout

"""Console helpers of the ``metacpo`` CLI: quieter Ray start-up, progress bars, signals.

Nothing here imports Ray: the filters attach to Ray's loggers by name, so they are in
place before Ray is imported.
"""
from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
import warnings
from typing import Any, Iterable, Iterator, Optional

#: Known start-up noise of Ray / RLlib 2.60 on this package's code path:
#: logger name -> substrings of messages that are dropped (nothing else from it is).
NOISE: dict[str, tuple[str, ...]] = {
    # "You are running MetaCPO on the new API stack! This is the new default ..."
    "ray.rllib.algorithms.algorithm_config": ("on the new API stack!",),
    # RLlib builds its RLModules through the deprecated RLModuleConfig path itself.
    "ray._common.deprecation": ("RLModule(config=",),
    # Tune's system monitor, on a machine without GPUs.
    "ray.tune.utils.util": ("Install gputil",),
    # Tune's TensorBoard logger on the per-task EnvRunner node ids (strings) of a result.
    "ray.tune.logger.tensorboardx": ("metacpo/per_task/node_id",),
}

#: Python warnings of the same kind (category, message regex).
NOISY_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (DeprecationWarning, r".*RLModuleConfig.*"),
)


class _DropKnownNoise(logging.Filter):
    """Drops a logger's records whose message contains one of ``needles``."""

    def __init__(self, needles: Iterable[str]) -> None:
        super().__init__()
        self.needles = tuple(needles)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 (a malformed record is not ours to judge)
            return True
        return not any(n in message for n in self.needles)


def quiet_ray_noise() -> None:
    """Drop the known Ray / RLlib start-up noise (``NOISE``, ``NOISY_WARNINGS``) in this
    process; every other message, warnings included, still shows. Idempotent."""
    for name, needles in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownNoise) for f in logger.filters):
            logger.addFilter(_DropKnownNoise(needles))
    for category, message in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


# -- progress bars ------------------------------------------------------------------------------
def progress(total: Optional[int], desc: str, unit: str = "it") -> Any:
    """A tqdm progress bar with ETA on stderr; shown only on a terminal (off when stderr is
    not a TTY, e.g. in CI logs or when piped; ``TQDM_DISABLE=1`` turns it off too)."""
    from tqdm.auto import tqdm

    off = os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")
    disable = True if off else None  # None: on only when stderr is a terminal
    # every update is drawn (mininterval 0): these bars count slow units (iterations, steps,
    # episodes, trial iterations), and a bar that skipped them would show nothing between
    # its start and its end
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable,
                dynamic_ncols=True, leave=False, mininterval=0, miniters=1)


def say(text: str) -> None:
    """Print a line on stdout without breaking an open progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()


# -- signals ------------------------------------------------------------------------------------
#: Seconds an interrupted command has to unwind (end its MLflow runs, stop Ray) before the
#: process exits anyway with 128 + signal: an interrupt never leaves a command hanging.
UNWIND_LIMIT_S = 60.0


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM / SIGHUP: unwinds like Ctrl-C (``finally``
    blocks run, Ray shuts down, open MLflow runs end as KILLED)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: The last signal turned into an interrupt (Tune / Ray may re-raise it as a plain
#: KeyboardInterrupt on the way out).
last_signal: Optional[int] = None


def _exit_if_still_unwinding(signum: int, limit_s: float) -> None:
    """Watchdog thread of an interrupt: exit the process once the unwinding takes too long."""
    time.sleep(limit_s)
    sys.stderr.write(f"metacpo: interrupted ({signal.Signals(signum).name}); shutting down "
                     f"took more than {limit_s:.0f} s, exiting now. Where it waited:\n")
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(128 + signum)


def _interrupt(signum: int, frame: Any) -> None:
    """Handler of SIGINT / SIGTERM / SIGHUP inside :func:`signal_handlers`."""
    global last_signal
    last_signal = signum
    # A second signal while unwinding ends the process the default way.
    signal.signal(signum, signal.SIG_DFL)
    threading.Thread(target=_exit_if_still_unwinding, args=(signum, UNWIND_LIMIT_S),
                     name="metacpo-unwind-watchdog", daemon=True).start()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _handled_signals() -> list[int]:
    return [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP")
                                              else [])


@contextlib.contextmanager
def signal_handlers() -> Iterator[None]:
    """While open, Ctrl-C raises KeyboardInterrupt and SIGTERM / SIGHUP raise
    :class:`Terminated` in the main thread; the process then has ``UNWIND_LIMIT_S`` to
    unwind before it exits with 128 + signal, and a second signal ends it at once. Tune
    leaves Ctrl-C alone instead of turning it into a graceful stop, so that an interrupted
    sweep ends the same way. The previous handlers are restored afterwards; off the main
    thread this does nothing.
    """
    global last_signal
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    last_signal = None
    signals = _handled_signals()
    previous = {sig: signal.signal(sig, _interrupt) for sig in signals}
    _active.append(signals)
    tune_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield
    finally:
        _active.pop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if tune_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_env


_active: list[list[int]] = []  # the signals of the open signal_handlers() blocks


def reclaim_signals() -> None:
    """Put the handlers of an open :func:`signal_handlers` block back (``ray.init`` sets
    its own SIGTERM handler, a plain ``sys.exit``, in the driver)."""
    if _active and threading.current_thread() is threading.main_thread():
        for sig in _active[-1]:
            signal.signal(sig, _interrupt)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold Ctrl-C / SIGTERM / SIGHUP until the block ends, then act on the first one as
    the handler before would have: a write to the tracking store is never cut in half
    (which can leave a lock or a transaction open that the KILLED-marking on the way out
    then waits for). A second signal inside the block acts at once. Off the main thread
    this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    signals = _handled_signals()

    def hold(signum: int, frame: Any) -> None:
        if held:  # the second one: act now
            _deliver(signum, previous[signum])
        held.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held:
            _deliver(held[0], previous[held[0]])


def _deliver(signum: int, handler: Any) -> None:
    """Act on ``signum`` as ``handler`` (a callable, SIG_DFL or SIG_IGN) would."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def interrupt_signal(interrupt: KeyboardInterrupt) -> int:
    """The signal behind an interrupt: SIGTERM / SIGHUP if one was received, else SIGINT."""
    return getattr(interrupt, "signum", None) or last_signal or int(signal.SIGINT)


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """The shell's convention: 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + interrupt_signal(interrupt)

"""session.run, the one call into onnxruntime's runs, made so that Ctrl-C and SIGTERM end it.

Python runs signal handlers in the main thread only, and only between bytecodes: a main thread
inside session.run would take the signal when the run ends (a 1e12-iteration Loop: never). So
the main thread's runs go to a helper thread while the main thread waits; the KeyboardInterrupt
or SystemExit the signal raises there tells the run to terminate (RunOptions.terminate, which
onnxruntime checks between nodes and between a Loop's iterations) and goes on up. Runs on other
threads (an MCSession's workers) register in an InFlight, which the predict stops.
"""

import contextlib
import os
import queue
import threading
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from typing import Optional

import onnxruntime as ort

# A stopped run is told to end; the stop waits this long for it, then goes on.
STOP_GRACE_S = 1.0


class InFlight:
    """The runs a predict's workers are making, so that leaving the predict early ends them all,
    including those that start after the stop."""

    def __init__(self):
        self._lock = threading.Lock()
        self._runs: set = set()
        self._stopped = False

    @contextlib.contextmanager
    def running(self, options: "ort.RunOptions"):
        with self._lock:
            if self._stopped:
                options.terminate = True
            self._runs.add(options)
        try:
            yield
        finally:
            with self._lock:
                self._runs.discard(options)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            for options in self._runs:
                options.terminate = True


def stoppable_run(session, names, feed, options: "ort.RunOptions", in_flight: Optional[InFlight] = None):
    """session.run(names, feed, options), ended by a signal the main thread takes meanwhile."""
    if threading.current_thread() is not threading.main_thread():
        with in_flight.running(options) if in_flight else contextlib.nullcontext():
            return session.run(names, feed, options)
    future = _runner().submit(session.run, names, feed, options)
    try:
        return future.result()
    except BaseException:
        if not future.done():  # stopped while onnxruntime runs
            options.terminate = True
            wait_for([future], STOP_GRACE_S)
        raise


class _Runner:
    """One daemon thread that makes the main thread's onnxruntime runs, one at a time, so that
    the main thread stays free to take signals. A daemon thread: a run that does not end within
    STOP_GRACE_S of its stop (one long kernel) does not hold up the process's exit."""

    def __init__(self):
        self.pid = os.getpid()
        self._jobs: "queue.SimpleQueue" = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="mcdrop-run", daemon=True).start()

    def _serve(self):
        while True:
            call, args, future = self._jobs.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call(*args))
                except BaseException as err:
                    future.set_exception(err)

    def submit(self, call, *args) -> Future:
        future: Future = Future()
        self._jobs.put((call, args, future))
        return future


_RUNNER: Optional[_Runner] = None
_RUNNER_LOCK = threading.Lock()


def _runner() -> _Runner:
    global _RUNNER
    with _RUNNER_LOCK:
        if _RUNNER is None or _RUNNER.pid != os.getpid():  # a forked child has no thread of its own
            _RUNNER = _Runner()
        return _RUNNER

"""A local Ray instance in a spawned process of its own, for the tests of the Ray engine.

ray.init makes its caller a Ray driver: it installs a SIGTERM handler (sys.exit) and owns a raylet
whose shutdown can signal it. In a pytest-xdist worker either one ended the worker ("node down:
Not properly terminated" in CI, then a controller that never finished), so the driver lives here,
in its own session, and the tests send it calls.
"""

import multiprocessing
import os
import traceback

START_TIMEOUT_S = 300  # a loaded 2-CPU machine takes ~10-60 s to start Ray
CALL_TIMEOUT_S = 600


class RayProcess:
    """One spawned process holding a local Ray instance of `num_cpus`; `call` runs a picklable
    function there and returns its result or raises its exception (with the child's traceback)."""

    def __init__(self, num_cpus: int = 2):
        context = multiprocessing.get_context("spawn")
        self._connection, child_end = context.Pipe()
        self._process = context.Process(target=_serve, args=(child_end, num_cpus), daemon=True)
        self._process.start()
        child_end.close()
        self._answer(START_TIMEOUT_S)

    def call(self, function, *args, **kwargs):
        self._connection.send((function, args, kwargs))
        return self._answer(CALL_TIMEOUT_S)

    def close(self):
        try:
            self._connection.send(None)
            self._process.join(timeout=120)
        except OSError:  # the process had already ended
            pass
        finally:
            if self._process.is_alive():
                self._process.kill()
                self._process.join()

    def _answer(self, timeout_s: float):
        if not self._connection.poll(timeout_s):
            raise TimeoutError(f"the Ray process gave no answer in {timeout_s} s")
        try:
            succeeded, value = self._connection.recv()
        except EOFError:
            self._process.join(timeout=10)
            raise RuntimeError(f"the Ray process ended (exit code {self._process.exitcode})") from None
        if succeeded:
            return value
        raise value


def call_with_environment(environment: dict, function, *args, **kwargs):
    """function(*args, **kwargs) with `environment` set in the Ray process for the call."""
    os.environ.update(environment)
    try:
        return function(*args, **kwargs)
    finally:
        for name in environment:
            os.environ.pop(name, None)


def _serve(connection, num_cpus: int):
    os.setsid()  # a signal Ray sends to its driver's process group stays in this one
    import ray

    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    connection.send((True, None))
    while (request := connection.recv()) is not None:
        function, args, kwargs = request
        try:
            connection.send((True, function(*args, **kwargs)))
        except Exception as error:
            error.add_note("in the Ray process:\n" + traceback.format_exc())
            try:
                connection.send((False, error))
            except Exception:  # an exception that does not pickle
                connection.send((False, RuntimeError(traceback.format_exc())))
    ray.shutdown()

"""logs.py: the library's messages reach stdout as plain lines once configured (as `multistep` does), once each,
and reach nobody's stdout before."""

import logging

from multistep import logs


def test_messages_are_plain_lines_on_stdout_once_configured(capsys, monkeypatch):
    root = logging.getLogger(logs.ROOT)
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh process: nothing shown yet
    monkeypatch.setattr(root, "level", logging.NOTSET)
    log = logging.getLogger("multistep.sweep.driver")
    log.info("before configure")
    assert capsys.readouterr().out == ""  # a notebook that configured nothing sees nothing at INFO
    logs.configure()
    logs.configure()  # idempotent: one handler, one line per message
    log.info("sweep finished in %d s", 3)
    logging.getLogger("other.library").warning("not ours")
    assert capsys.readouterr().out == "sweep finished in 3 s\n"
    assert not logs.on_terminal()  # captured stdout is not a terminal: no live progress bars


def test_a_line_logged_while_a_print_is_interrupted_is_dropped_not_raised(monkeypatch):
    """A signal handler's line arriving while stdout is mid-print raises "reentrant call": the handler drops it."""

    def reentrant(*args, **kwargs):
        raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stdout>'>")

    monkeypatch.setattr("builtins.print", reentrant)
    handler = logs.StdoutLines()
    handler.handleError = lambda record: (_ for _ in ()).throw(AssertionError("reported as a logging error"))
    handler.emit(logging.LogRecord("multistep.x", logging.INFO, __file__, 1, "SIGINT: stopping", None, None))

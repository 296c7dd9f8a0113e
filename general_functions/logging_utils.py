"""Run folders, logging to stdout and ``log.txt``, and metrics to TensorBoard and ``metrics.csv``."""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .io_utils import DiskFullError, atomic_write_text, disk_full_message, is_disk_full

__all__ = ["MetricWriter", "close_log_files", "get_logger"]


def get_logger(run_dir: str | Path | None, name: str = "fbnet") -> logging.Logger:
    """A logger writing plain lines to stderr and (when ``run_dir`` is given) to ``run_dir/log.txt``.

    stdout is kept free for the final JSON line that scripts read.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if run_dir is not None:
        file_handler = _LogFile(Path(run_dir) / "log.txt")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(file_handler)
    return logger


class _LogFile(logging.FileHandler):
    """``log.txt``: a full disk stops the run with one line naming the file (logging's default prints
    a traceback for every record and goes on without the file)."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        err = sys.exc_info()[1]
        if err is not None and is_disk_full(err):
            raise DiskFullError(disk_full_message(self.baseFilename)) from None
        super().handleError(record)


def close_log_files(run_dir: str | Path) -> None:
    """Close every logging handler that writes ``run_dir/log.txt`` (before the file is deleted)."""
    path = os.path.abspath(Path(run_dir) / "log.txt")  # as logging.FileHandler records it
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for log in loggers:
        for handler in list(getattr(log, "handlers", [])):
            if isinstance(handler, logging.FileHandler) and handler.baseFilename == path:
                log.removeHandler(handler)
                handler.close()


class MetricWriter:
    """Scalars to tensorboardX (``run_dir/tb``) and one CSV row per step (``run_dir/metrics.csv``).

    On resume, pass ``resume_step``: CSV rows after it are dropped, so the file matches the run.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, enabled: bool = True):
        self.enabled = enabled
        self.csv_path = Path(run_dir) / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        self.tb = None
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        if self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                self.rows = list(csv.DictReader(f))
            if resume_step is not None:
                self.rows = [r for r in self.rows if int(float(r["step"])) <= resume_step]
            else:
                self.rows = []
        self.tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=_next(resume_step))
        self._columns: list[str] = ["step"]
        for row in self.rows:
            self._columns += [c for c in row if c not in self._columns]
        self._synced = False  # the file on disk holds exactly self.rows with self._columns

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Log ``values`` (tags like ``train/loss``) at ``step`` and rewrite the CSV."""
        if not self.enabled:
            return
        try:
            for tag, value in values.items():
                self.tb.add_scalar(tag, value, step)
        except OSError as err:
            raise self._tb_error(err) from None
        row = {"step": step, **values}
        self.rows.append(row)
        new_columns = [c for c in row if c not in self._columns]
        if new_columns or not self._synced:
            # a new column changes the header: rewrite the whole file atomically
            self._columns += new_columns
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=self._columns)
            writer.writeheader()
            writer.writerows(self.rows)
            atomic_write_text(self.csv_path, buf.getvalue())
            self._synced = True
        else:
            # same header: append one line (a full rewrite every step costs O(steps^2))
            try:
                with open(self.csv_path, "a", newline="") as f:
                    csv.DictWriter(f, fieldnames=self._columns).writerow(row)
            except OSError as err:
                if is_disk_full(err):
                    self._synced = False  # the next row rewrites the file whole
                    raise DiskFullError(disk_full_message(self.csv_path)) from None
                raise
        try:
            self.tb.flush()  # the events reach the disk here, in this thread, not in tensorboardX's
        except OSError as err:
            raise self._tb_error(err) from None

    def _tb_error(self, err: OSError) -> BaseException:
        if not is_disk_full(err):
            return err
        tb_dir = Path(self.tb.logdir)
        events = sorted(tb_dir.glob("events.out.tfevents.*"), key=lambda f: f.stat().st_mtime)
        return DiskFullError(disk_full_message(events[-1] if events else tb_dir))

    def close(self) -> None:
        if self.tb is not None:
            try:
                self.tb.close()
            except OSError as err:
                if not is_disk_full(err):  # the run's own error already said the disk is full
                    raise


def _next(step: int | None) -> int | None:
    return None if step is None else step + 1

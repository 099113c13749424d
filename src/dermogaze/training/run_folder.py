"""The run folder: the files a training run writes, in which order, and how a resume repairs them.

Its files (:class:`RunWriter`; only rank 0 writes, holding the folder's lock)::

    RUN/config.yaml      the resolved configuration
    RUN/metrics.jsonl    one JSON line per epoch
    RUN/last.pt          the checkpoint after the latest epoch (``--resume RUN`` continues from it)
    RUN/best.pt          the checkpoint of the epoch with the lowest validation loss
    RUN/.lock            exists while a run writes here: the writer's pid, locked (:class:`~dermogaze.files.PidLock`)

Every file is replaced atomically (:func:`~dermogaze.files.atomic_write`). After an epoch ``e`` the
writes come in this order::

    1. metrics.jsonl     rows 1..e
    2. last.pt           epoch e
    3. best.pt           a copy of last.pt, only when epoch e improved the validation loss

so that, whenever the writing process is killed, the folder satisfies the invariant

- ``metrics.jsonl`` holds rows ``1..last.epoch`` and perhaps the row of the epoch after it;
- ``best.pt`` is the checkpoint of ``last.best_epoch``, except after a kill between writes 2 and 3:
  then ``last.best_epoch == last.epoch`` and ``best.pt`` is an older best or absent, never newer;
- temporary files ``.<name>.<random>.tmp`` of the write that was cut short may remain.

Resuming repairs all three (:meth:`RunWriter.start`): rows after ``last.epoch`` are dropped,
``best.pt`` is made a copy of ``last.pt`` when ``last.pt`` is its own best epoch, and the temporary
files are removed. A kill at any instant of an epoch's end therefore resumes into the same
``last.pt``, ``best.pt`` and ``metrics.jsonl`` as the uninterrupted run. A fresh start (in a folder
without any of the four files, or with ``overwrite``) removes ``last.pt`` first, so that no old
``last.pt`` ever sits beside a new ``config.yaml``.

Checkpoints are written and read by :mod:`dermogaze.training.checkpoint`.
"""

from __future__ import annotations

import filecmp
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import Config, save_config
from ..errors import DermogazeError
from ..files import PidLock, copy_file, read_jsonl, remove_temporaries, write_jsonl
from .checkpoint import load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)


class RunWriter:
    """The files of a run folder and their write order (see the module docstring).

    Only rank 0 locks the folder and writes; every rank may read (:meth:`resume_checkpoint`).

    Args:
        run: the run folder.
    """

    def __init__(self, run: str | Path) -> None:
        self.run = Path(run)
        self.config = self.run / "config.yaml"
        self.metrics = self.run / "metrics.jsonl"
        self.last = self.run / "last.pt"
        self.best = self.run / "best.pt"
        self.lock_file = self.run / ".lock"
        self._lock = PidLock(self.lock_file)
        self._created = False

    @property
    def files(self) -> tuple[Path, ...]:
        """The run's files, ``last.pt`` first (the order in which a fresh start removes them)."""
        return (self.last, self.best, self.metrics, self.config)

    def existing(self) -> list[Path]:
        """The run's files present in the folder."""
        return [p for p in self.files if p.exists()]

    def lock(self) -> None:
        """Hold the folder for this process until :meth:`unlock` or its death (``RUN/.lock``).

        Raises:
            DermogazeError: the folder is a file, or another process holds it (the message gives its pid).
        """
        if self.run.exists() and not self.run.is_dir():
            raise DermogazeError(f"{self.run} is a file, not a run folder; choose another --out")
        self._created = not self.run.exists()
        self.run.mkdir(parents=True, exist_ok=True)
        holder = self._lock.acquire()
        if holder is not None:
            raise DermogazeError(
                f"{self.run} is in use by another dermogaze train (pid {holder}); wait for it to end, or choose "
                "another --out"
            )

    def unlock(self) -> None:
        """Release :meth:`lock` (no-op if not held); a folder the lock created and nothing filled is removed."""
        if not self._lock.held:
            return
        self._lock.release()
        if self._created and self.run.is_dir() and not any(self.run.iterdir()):
            self.run.rmdir()

    def check_fresh(self, *, overwrite: bool) -> None:
        """Refuse to start afresh over a run's files unless ``overwrite``.

        Raises:
            DermogazeError: the folder holds ``config.yaml``, ``metrics.jsonl``, ``last.pt`` or ``best.pt``.
        """
        found = self.existing()
        if not found or overwrite:
            return
        how = f"continue it with --resume {self.run}, " if self.last in found else ""
        raise DermogazeError(
            f"{self.run} already holds a training run ({', '.join(p.name for p in found)}); {how}replace it with "
            "--overwrite, or choose another --out"
        )

    def resume_checkpoint(self, cfg: Config) -> dict[str, Any]:
        """``last.pt``, checked against ``cfg`` and the rest of the folder.

        Raises:
            DermogazeError: no ``last.pt`` (no epoch completed), a checkpoint of another model
                configuration, or a missing ``best.pt`` that ``last.pt`` cannot restore.
        """
        if not self.last.exists() and self.existing():
            raise DermogazeError(
                f"{self.run} holds no completed epoch (no {self.last.name}): nothing to resume; start it again "
                "with --overwrite"
            )
        ckpt = load_checkpoint(self.last, resume=True)
        if ckpt["config"]["model"] != cfg.to_dict()["model"]:
            raise DermogazeError(
                f"cannot resume {self.last}: its model configuration {ckpt['config']['model']} differs from the "
                f"requested {cfg.to_dict()['model']}"
            )
        epoch, best_epoch = int(ckpt["epoch"]), int(ckpt["best_epoch"])
        if 0 < best_epoch < epoch and not self.best.is_file():
            raise DermogazeError(
                f"{self.best} (the weights of epoch {best_epoch}, the best so far) is missing; restore it before "
                f"resuming {self.run}"
            )
        return ckpt

    def start(
        self, cfg: Config, history: Sequence[Mapping[str, Any]], *, resume_from: Mapping[str, Any] | None
    ) -> None:
        """Make the folder consistent before the first epoch, then write ``config.yaml`` and the history so far.

        Removes the temporary files of interrupted writes. A fresh start (``resume_from`` None)
        removes ``last.pt`` and ``best.pt``; a resumed one restores ``best.pt`` from ``last.pt`` when
        ``last.pt`` is its own best epoch (a kill between the two writes of an improving epoch).
        """
        self.run.mkdir(parents=True, exist_ok=True)
        for path in self.files:
            for tmp in remove_temporaries(path):
                logger.info("removed %s (left by an interrupted write)", tmp)
        if resume_from is None:
            self.last.unlink(missing_ok=True)
            self.best.unlink(missing_ok=True)
        elif int(resume_from["best_epoch"]) == int(resume_from["epoch"]) and not (
            self.best.is_file() and filecmp.cmp(self.last, self.best, shallow=False)
        ):
            copy_file(self.last, self.best)
            logger.info("restored %s from %s (epoch %d, the best)", self.best, self.last, resume_from["epoch"])
        save_config(cfg, self.config)
        write_jsonl(history, self.metrics)

    def read_history(self, until_epoch: int) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl`` up to ``until_epoch`` (later rows belong to an interrupted epoch)."""
        return [r for r in read_jsonl(self.metrics) if r["epoch"] <= until_epoch]

    def save_epoch(self, state: Mapping[str, Any], history: Sequence[Mapping[str, Any]], *, best: bool) -> None:
        """After an epoch: ``metrics.jsonl``, then ``last.pt``, then ``best.pt`` when it improved (in this order)."""
        write_jsonl(history, self.metrics)
        save_checkpoint(self.last, state)
        if best:
            copy_file(self.last, self.best)

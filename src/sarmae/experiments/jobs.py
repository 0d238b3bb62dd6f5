"""Experiment steps side by side on CPU cores: one process per step, steps that need another's output wait for it.

A tiny model uses one core far better than two, so on a CPU two steps at once finish ~1.5x sooner than one after
the other. Each step runs in a spawned process with an equal share of the cores and logs to ``<out>/log.txt``;
one progress bar shows the share of the work done and an ETA from measured rates (:func:`estimate`), read from
those logs. The first failing step's error is re-raised once the running ones are stopped. SIGTERM / Ctrl-C stop
every worker within seconds (:func:`stop_workers`; a training step writes its checkpoint first): no process is
left behind, and the same command resumes.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sarmae.errors import Stopped, raise_stopped


@dataclass
class Job:
    """One step: ``fn(**kwargs)`` writing into ``out``; starts once the jobs whose ``out`` is in ``needs`` finished.

    ``epochs`` is the step's length for the progress bar (0 for steps without a Lightning progress bar) and
    ``kind`` names the steps that cost the same per epoch (e.g. ``pretrain``, ``finetune``).
    """

    fn: Callable[..., Any]
    kwargs: dict[str, Any]
    out: Path
    needs: tuple[Path, ...] = ()
    epochs: int = 0
    kind: str = ""
    result: Any = field(default=None, repr=False)


def side_by_side_ok(jobs: list[Job]) -> bool:
    """Several steps, several cores and no GPU (on a GPU the steps would only compete for the device)."""
    import torch

    return len(jobs) > 1 and (os.cpu_count() or 1) > 1 and not torch.cuda.is_available()


def run_jobs(jobs: list[Job]) -> list[Any]:
    """Run every job (side by side where :func:`side_by_side_ok`, else in list order); returns their results.

    ``jobs`` must be listed so that each one's ``needs`` come before it.
    """
    if not side_by_side_ok(jobs):
        for job in jobs:
            job.result = job.fn(**job.kwargs)
        return [job.result for job in jobs]
    return _run_in_processes(jobs)


def _in_subprocess(fn: Callable[..., Any], kwargs: dict[str, Any], threads: int, out: Path) -> Any:
    """Run one job in a pool worker. Stopped by a signal, the worker process ends at once (exit 128 + signal)
    instead of returning to the pool for more work; a training job has written its checkpoint by then."""
    import torch

    signal.signal(signal.SIGTERM, raise_stopped)
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.txt", "a", buffering=1) as log, redirect_stdout(log), redirect_stderr(log):
        try:
            return fn(**kwargs)
        except (Stopped, KeyboardInterrupt) as stop:  # SIGTERM, or Ctrl-C
            print(getattr(stop, "message", "") or "stopped", flush=True)
            signum = getattr(stop, "signum", signal.SIGINT)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # an idle worker just ends when the pool is stopped
    os._exit(128 + signum)


_PROGRESS = re.compile(rb"Epoch (\d+):\s+\d+%\|[^|]*\| (\d+)/(\d+)")


def epochs_done(log: Path) -> float:
    """Epochs a run has trained, from the last progress-bar line in its log (fractions within an epoch)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            matches = _PROGRESS.findall(f.read())
    except OSError:
        return 0.0
    if not matches:
        return 0.0
    epoch, step, steps = (int(v) for v in matches[-1])
    return epoch + step / max(1, steps)


def estimate(jobs: list[Job], done: dict[Path, float], elapsed: dict[Path, float], workers: int
             ) -> tuple[float, float | None]:
    """(share of the work done, seconds left or None while unmeasured) for ``jobs``.

    ``done`` holds each job's epochs trained, ``elapsed`` the seconds since each started job began (until it
    finished, for finished jobs). A kind's seconds per epoch is measured from its own jobs (their time over their
    epochs, start-up and evaluation included), so a pre-training epoch and a fine-tuning epoch of very different
    cost are not counted alike; a kind not measured yet borrows the slowest measured rate, and no ETA is shown
    before some job has trained a whole epoch (earlier, start-up time would dominate the rate and the ETA would
    overshoot several-fold). The time left is the work left shared by ``workers`` processes.
    """
    rates: dict[str, float] = {}
    for kind in {job.kind for job in jobs if job.epochs}:
        mine = [job for job in jobs if job.kind == kind and done.get(job.out, 0) >= 1]  # start-up weighs less
        if mine:
            rates[kind] = sum(elapsed[job.out] for job in mine) / sum(done[job.out] for job in mine)
    if not rates:
        return 0.0, None
    fallback = max(rates.values())
    work_done = work_left = 0.0
    for job in jobs:
        rate = rates.get(job.kind, fallback)
        epochs = min(done.get(job.out, 0.0), job.epochs)
        work_done += epochs * rate
        work_left += (job.epochs - epochs) * rate
    total = work_done + work_left
    return (work_done / total if total else 1.0), work_left / max(1, workers)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def _run_in_processes(jobs: list[Job]) -> list[Any]:
    cores = os.cpu_count() or 1
    workers = min(len(jobs), cores)
    threads = max(1, cores // workers)
    print(f"running {len(jobs)} steps, {workers} at a time ({threads} thread(s) each); logs: "
          + ", ".join(str(job.out / "log.txt") for job in jobs))
    bar = tqdm(total=100, desc="demo", file=sys.stderr, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {elapsed} elapsed{postfix}", postfix="ETA: measuring")
    previous = signal.signal(signal.SIGTERM, raise_stopped)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    finished: set[Path] = set()
    started: dict[Path, float] = {}
    elapsed: dict[Path, float] = {}
    running: dict[Future, Job] = {}
    pending = list(jobs)
    try:
        while pending or running:
            for job in [j for j in pending if all(n in finished for n in j.needs)][:workers - len(running)]:
                # no more than one job per worker: a job's clock (its measured rate) starts when it runs
                running[pool.submit(_in_subprocess, job.fn, job.kwargs, threads, job.out)] = job
                started[job.out] = time.monotonic()
                pending.remove(job)
            done, _ = wait(running, timeout=5, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                job.result = future.result()  # a failed step raises here; the finally clause stops the others
                finished.add(job.out)
                elapsed[job.out] = time.monotonic() - started[job.out]
            for job in running.values():
                elapsed[job.out] = time.monotonic() - started[job.out]
            epochs = {job.out: job.epochs if job.out in finished else epochs_done(job.out / "log.txt")
                      for job in jobs if job.out in started}
            share, left = estimate(jobs, epochs, elapsed, workers)
            bar.set_postfix_str("ETA: measuring" if left is None else f"ETA {_clock(left)}", refresh=False)
            bar.update(round(100 * share - bar.n, 1))
        return [job.result for job in jobs]
    finally:
        bar.close()
        if pending or running:  # stopped early: a step failed, Ctrl-C or SIGTERM
            stop_workers(multiprocessing.active_children())
        pool.shutdown(wait=True, cancel_futures=True)
        signal.signal(signal.SIGTERM, previous)


GRACE_S = 7.0  # a worker's current training step plus its checkpoint; the whole stop stays under 10 s


def stop_workers(processes: list, grace: float = GRACE_S) -> None:
    """SIGTERM every worker (a training step then saves its checkpoint and exits); SIGKILL those still running
    after ``grace`` seconds, and say so."""
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    late = [process for process in processes if process.is_alive()]
    for process in late:
        process.kill()
        process.join()
    if late:
        print(f"{len(late)} worker(s) did not stop within {grace:g} s and were killed; they resume from their "
              "last checkpoint", file=sys.stderr)

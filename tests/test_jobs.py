"""Experiment steps side by side: dependencies respected, errors re-raised, SIGTERM leaves no worker behind,
the progress bar reads each step's log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sarmae.experiments.jobs import Job, epochs_done, estimate, run_jobs

needs_two_cores = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="steps run side by side only on 2+ cores")


def stamp(out: Path, wait: float = 0.0) -> float:
    """A step: sleeps ``wait`` seconds, then writes and returns the time it finished."""
    time.sleep(wait)
    now = time.time()
    (out / "done").write_text(repr(now))
    return now


def fail(out: Path) -> None:
    raise ValueError(f"step {out.name} failed")


@needs_two_cores
def test_a_step_starts_after_the_steps_it_needs(tmp_path):
    first, other, second = (tmp_path / n for n in ("first", "other", "second"))
    jobs = [Job(stamp, {"out": first, "wait": 1.5}, first), Job(stamp, {"out": other}, other),
            Job(stamp, {"out": second}, second, needs=(first,))]
    finished = run_jobs(jobs)
    assert finished[2] > finished[0]  # "second" waited for "first" although a core was free after "other"
    assert all(job.result == t for job, t in zip(jobs, finished))
    assert (second / "log.txt").is_file()  # every step logs to its own folder


@needs_two_cores
def test_a_failing_step_raises_its_error(tmp_path):
    bad, ok = tmp_path / "bad", tmp_path / "ok"
    jobs = [Job(fail, {"out": bad}, bad), Job(stamp, {"out": ok}, ok)]
    with pytest.raises(ValueError, match="step bad failed"):
        run_jobs(jobs)


@needs_two_cores
def test_sigterm_stops_every_worker(tmp_path):
    script = tmp_path / "steps.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from sarmae.experiments.jobs import Job, run_jobs

        def nap(out):
            (out / "started").write_text("1")
            time.sleep(120)

        if __name__ == "__main__":
            root = Path(sys.argv[1])
            run_jobs([Job(nap, {"out": root / name}, root / name) for name in ("a", "b")])
    """))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not all((tmp_path / n / "started").is_file() for n in ("a", "b")) and time.time() < deadline:
        time.sleep(0.2)
    children = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert len(children) >= 2  # both workers are running
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    time.sleep(0.5)
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()
             and Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"]
    assert alive == []


def test_progress_reads_the_last_progress_line(tmp_path):
    log = tmp_path / "log.txt"
    assert epochs_done(log) == 0.0  # not started yet
    log.write_text("init=sar from x\n" + "".join(
        f"\rEpoch {e}:  {100 * s // 44}%|###   | {s}/44 [00:01<00:02,  2.2it/s, loss=0.5]" for e in range(3)
        for s in range(45)) + "\rEpoch 3:  25%|##    | 11/44 [00:05<00:15, 2.2it/s]")
    assert epochs_done(log) == pytest.approx(3.25)


def test_estimate_weighs_each_kind_by_its_measured_rate(tmp_path):
    pre, fine_a, fine_b = (Job(stamp, {}, tmp_path / n, epochs=e, kind=k) for n, e, k in
                           (("pre", 100, "pretrain"), ("a", 20, "finetune"), ("b", 20, "finetune")))
    jobs = [pre, fine_a, fine_b]
    assert estimate(jobs, {}, {}, workers=2) == (0.0, None)  # nothing measured: no ETA rather than a guess
    assert estimate(jobs, {fine_a.out: 0.3}, {fine_a.out: 4.0}, workers=2) == (0.0, None)  # mostly start-up yet
    # fine-tuning runs at 5 s/epoch, pre-training at 18 s/epoch: 10 fine-tuning epochs left (50 s) and 50
    # pre-training epochs (900 s) = 950 s of work on 2 workers
    done = {pre.out: 50.0, fine_a.out: 20.0, fine_b.out: 10.0}
    elapsed = {pre.out: 900.0, fine_a.out: 100.0, fine_b.out: 50.0}
    share, left = estimate(jobs, done, elapsed, workers=2)
    assert left == pytest.approx(950 / 2)
    assert share == pytest.approx((900 + 150) / (900 + 150 + 950))
    # a kind not measured yet borrows the slowest measured rate, not one epoch = one unit
    share, left = estimate(jobs, {fine_a.out: 4.0}, {fine_a.out: 20.0}, workers=2)
    assert left == pytest.approx((100 + 16 + 20) * 5.0 / 2)

"""The farm's driver: deals jobs (longest first) to workers, follows their progress, gives a job whose worker died
to another worker (it resumes from its saved state), and writes the report.

In this process (default): one ``JobRunner``, the models loaded once per model set. With Ray: one actor per GPU
(or per ``threads`` CPU cores), a plain driver loop over ``ray.wait`` — Ray's ActorPool has no failure handling.
A worker that dies (kill -9, out of memory, machine gone) surfaces as ``ActorDiedError`` (dead; Ray will not run
it again) or ``ActorUnavailableError`` (unreachable for now, maybe restarting): either way the job goes back to
the front of the queue, on a fresh actor, at most ``max_tries`` times; the dead actor is replaced.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .jobs import Job, JobList

log = logging.getLogger(__name__)

#: A job whose worker died this many times is given up (it probably kills its worker: out of memory…).
MAX_TRIES = 3


@dataclass
class FarmProgress:
    """What the progress bar shows: jobs and frames done, the rate, the time left."""
    jobs_total: int
    jobs_done: int = 0
    frames_total: int = 0
    frames_done: int = 0          # frames of finished jobs plus the running jobs' frames so far
    frames_per_second: float | None = None
    seconds_left: float | None = None
    running: dict = field(default_factory=dict)


@dataclass
class BatchResult:
    entries: list[dict]
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if all(e["status"] in ("done", "skipped") for e in self.entries) else 1


class ProgressTracker:
    def __init__(self, jobs: list[Job], on_progress: Callable[[FarmProgress], None] | None,
                 on_finished: Callable[[dict], None] | None):
        known = [j.expected_frames or 0 for j in jobs]
        self.state = FarmProgress(len(jobs), frames_total=sum(known))
        self.finished_frames = 0
        self.on_progress, self.on_finished = on_progress, on_finished
        self.started = time.monotonic()
        self.done: set = set()

    def running(self, updates: dict) -> None:
        self.state.running = {job: u for job, u in updates.items() if job not in self.done}
        self._publish()

    def finished(self, entry: dict) -> None:
        self.done.add(entry.get("job"))
        self.state.jobs_done += 1
        self.finished_frames += int(entry.get("frames") or 0) - int(entry.get("resumed_from") or 0)
        self.state.running.pop(entry.get("job"), None)
        if self.on_finished is not None:
            self.on_finished(entry)
        self._publish()

    def _publish(self) -> None:
        running = sum(int(u.get("frames_out") or 0) for u in self.state.running.values())
        self.state.frames_done = self.finished_frames + running
        seconds = time.monotonic() - self.started
        if self.state.frames_done and seconds > 0:
            self.state.frames_per_second = self.state.frames_done / seconds
            left = max(0, self.state.frames_total - self.state.frames_done)
            self.state.seconds_left = left / self.state.frames_per_second if self.state.frames_total else None
        if self.on_progress is not None:
            self.on_progress(self.state)


def _skipped(job: Job) -> dict:
    """The entry of a job that is not rendered: finished earlier (skipped), or bad (failed, with what to fix)."""
    if job.problem is not None:
        return job.entry("failed", job.problem, reason="not started: the job is wrong")
    return job.entry("skipped", reason="finished earlier (the output exists and no interrupted state)")


def _ordered(jobs: list[Job]) -> list[Job]:
    """Longest first, so the last job to start is a short one (unknown lengths last)."""
    return sorted(jobs, key=lambda j: (-(j.expected_frames or 0), j.number))


def run_local(jobs: list[Job], *, threads: int | None = None, tracker: ProgressTracker,
              check_cancel: Callable[[], None] | None = None) -> tuple[list[dict], bool]:
    """Every job in this process, one after another, the models loaded once per model set. ``check_cancel``
    raises to stop (a host's Cancel): the running job saves its state, the others are not started."""
    from .worker import JobRunner
    runner = JobRunner(threads)
    entries: list[dict] = []
    ordered = _ordered(jobs)
    for position, job in enumerate(ordered):
        try:
            entry = runner.run(job, lambda update: tracker.running({update["job"]: update}), check_cancel)
        except KeyboardInterrupt as error:   # Ctrl+C: the render saved its state (RenderInterrupted says where)
            entry = job.entry("interrupted", str(error) or "interrupted (Ctrl+C)")
            entries.append(entry)
            tracker.finished(entry)
            return entries, True
        entries.append(entry)
        tracker.finished(entry)
        if entry["status"] == "interrupted":   # cancelled by the host: the rest waits for the rerun
            entries += [{**_skipped(j), "status": "interrupted", "reason": "not started (cancelled)"}
                        for j in ordered[position + 1:]]
            return entries, True
    return entries, False


def _runtime_env() -> dict:
    """Ray workers import ``rain`` as the driver does: from the clone's folder when it is not installed."""
    import rain
    package_parent = str(Path(rain.__file__).resolve().parent.parent)
    if "site-packages" in package_parent or "dist-packages" in package_parent:
        return {}
    path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


class FarmUnavailable(ValueError):
    """The Ray cluster cannot be reached; the message says what to check."""


def start_ray(address: str | None, *, num_cpus: int | None = None):
    """Ray, connected: a local cluster started for this run (``address`` None) or an existing one."""
    if address:
        _check_reachable(address)
        # `ray start` secures a cluster with a token (~/.ray/auth_token on the head, to be copied to every
        # machine); a driver given an address uses it only when told, and Ray reads this when it is imported.
        if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or
                                                   (Path.home() / ".ray" / "auth_token").is_file()):
            os.environ["RAY_AUTH_MODE"] = "token"
    from ..optional import import_optional
    ray = import_optional("ray", "--ray (the render farm on Ray)")
    if ray.is_initialized():
        return ray
    options = {"include_dashboard": False, "log_to_driver": False, "runtime_env": _runtime_env()}
    if not address:   # "local": a new cluster for this run, never one another program started on this machine
        ray.init(address="local", num_cpus=num_cpus, **options)
        return ray
    try:
        ray.init(address=address, **options)
    except Exception as error:   # ConnectionError, AuthenticationError, a wrong address format…
        raise FarmUnavailable(f"cannot join the Ray cluster at {address} ({type(error).__name__}: "
                              f"{str(error).splitlines()[0]}). {JOIN_HELP}") from None
    return ray


JOIN_HELP = ("Start it with `ray start --head --port 6379` on the head machine and give the address that command "
             "prints (HEAD_IP:6379); when the cluster uses token authentication, copy ~/.ray/auth_token from the head "
             "to this machine (or set RAY_AUTH_TOKEN).")


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not minutes, when nothing listens at the address (Ray itself retries for a long time)."""
    import socket
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise FarmUnavailable(f"--ray {address}: give the head's address as HOST:PORT (e.g. 10.0.0.5:6379). {JOIN_HELP}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise FarmUnavailable(f"cannot reach the Ray cluster at {address} ({type(error).__name__}: {error}). "
                              f"{JOIN_HELP}") from None


def default_workers(ray, threads: int) -> tuple[int, bool]:
    """(workers, on GPUs): one per GPU of the cluster; without GPUs, one per ``threads`` CPU cores."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return gpus, True
    return max(1, int(resources.get("CPU", 1)) // max(1, threads)), False


def run_ray(jobs: list[Job], *, address: str | None, workers: int | None, threads: int, tracker: ProgressTracker,
            max_tries: int = MAX_TRIES, check_cancel: Callable[[], None] | None = None,
            on_worker: Callable[[object], None] | None = None) -> tuple[list[dict], bool]:
    """Every job on Ray workers; a job whose worker dies goes to a new worker and resumes from its state."""
    ray = start_ray(address)
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    from .worker import ray_board_class, ray_worker_class

    count, gpus = default_workers(ray, threads)
    count = workers or count
    Worker = ray_worker_class(ray).options(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else threads,
                                           max_concurrency=2)   # 2: stop() while run() renders
    board = ray_board_class(ray).options(num_cpus=0).remote()

    def new_worker():
        worker = Worker.remote(threads=None if gpus else threads, board=board)
        if on_worker is not None:
            on_worker(worker)
        return worker

    idle = [new_worker() for _ in range(count)]
    pending = _ordered(jobs)
    tries = {job.number: 0 for job in jobs}
    running: dict = {}                  # object ref -> (worker, job)
    entries: list[dict] = []
    interrupted = False
    try:
        while pending or running:
            if check_cancel is not None:
                try:
                    check_cancel()
                except Exception:   # a host's Cancel: stop as for Ctrl+C (every running job saves its state)
                    raise KeyboardInterrupt from None
            while idle and pending:
                worker, job = idle.pop(), pending.pop(0)
                tries[job.number] += 1
                running[worker.run.remote(job)] = (worker, job)
            done, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            tracker.running(ray.get(board.snapshot.remote()))
            for ref in done:
                worker, job = running.pop(ref)
                try:
                    entry = ray.get(ref)
                except (ActorDiedError, ActorUnavailableError, RayActorError) as error:
                    kind = type(error).__name__
                    try:
                        ray.kill(worker, no_restart=True)
                    except Exception:
                        pass
                    idle.append(new_worker())
                    if tries[job.number] < max_tries:
                        log.warning("%s: its worker is gone (%s); the job resumes on another worker from its last "
                                    "saved state", job.where, kind)
                        pending.insert(0, job)
                        continue
                    entry = job.entry("failed", f"its worker died {tries[job.number]} times ({kind}); "
                                      f"given up (out of memory? a damaged input that crashes the decoder?)")
                else:
                    idle.append(worker)
                entry["tries"] = tries[job.number]
                entries.append(entry)
                tracker.finished(entry)
    except KeyboardInterrupt:
        interrupted = True
        # Every running job saves its state at the step it is at, then ends; the report says where.
        for worker, _ in running.values():
            try:
                worker.stop.remote()
            except Exception:
                pass
        for ref, (worker, job) in list(running.items()):
            try:
                entry = ray.get(ref, timeout=120)
            except Exception as error:
                entry = job.entry("interrupted", f"stopped ({type(error).__name__}); its last saved state is kept")
            entry["tries"] = tries[job.number]
            entries.append(entry)
            tracker.finished(entry)
        for job in pending:
            entries.append({**_skipped(job), "status": "interrupted", "reason": "not started (Ctrl+C)"})
    return entries, interrupted


def run_batch(job_list: JobList, *, ray_address: str | bool | None = None, workers: int | None = None,
              threads: int | None = None, report: str | Path | None = None,
              on_progress: Callable[[FarmProgress], None] | None = None,
              on_finished: Callable[[dict], None] | None = None,
              check_cancel: Callable[[], None] | None = None, max_tries: int = MAX_TRIES) -> BatchResult:
    """Render a checked job list (``load_jobs``): in this process, or on Ray (``ray_address``: True for a local
    cluster started for the run, or a cluster's address). Bad and finished jobs are reported as skipped."""
    entries = [_skipped(job) for job in job_list.jobs if job.problem is not None or job.state == "done"]
    todo = job_list.runnable
    tracker = ProgressTracker(todo, on_progress, on_finished)
    interrupted = False
    if todo:
        if ray_address:
            cpu_threads = threads or max(1, (os.cpu_count() or 2) // 2)
            done, interrupted = run_ray(todo, address=None if ray_address is True else str(ray_address),
                                        workers=workers, threads=cpu_threads, tracker=tracker,
                                        max_tries=max_tries, check_cancel=check_cancel)
        else:
            done, interrupted = run_local(todo, threads=threads, tracker=tracker, check_cancel=check_cancel)
        entries += done
    entries.sort(key=lambda e: e["job"])
    result = BatchResult(entries, interrupted)
    if report is not None:
        write_report(report, job_list, result)
    return result


def write_report(path: str | Path, job_list: JobList, result: BatchResult) -> Path:
    """The JSON report, written whole or not at all (a temporary name, then renamed)."""
    path = Path(path)
    data = {"job_file": str(job_list.path), "interrupted": result.interrupted, "exit_code": result.exit_code,
            "jobs": result.entries}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    os.replace(partial, path)
    return path


def summary_table(result: BatchResult) -> str:
    rows = [("job", "status", "frames", "seconds", "frames/s", "where", "output / error")]
    for e in result.entries:
        rate = e.get("frames_per_second")
        place = " ".join(p for p in (e.get("node"), e.get("gpu")) if p) or "-"
        detail = e.get("output") if e["status"] == "done" else (e.get("error") or e.get("reason") or "")
        detail = str(detail).splitlines()[0] if detail else ""
        rows.append((str(e["job"]), e["status"], str(e.get("frames") or 0), f"{e.get('seconds') or 0:.1f}",
                     f"{rate:.2f}" if rate else "-", place, detail[:100]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r[:-1])) + "  " + r[-1] for r in rows)

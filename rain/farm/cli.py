"""``python -m rain batch JOBS``: render a job file; ``--ray`` spreads it over Ray workers.

    python -m rain batch jobs.csv --models-dir models --task face          # in this process
    python -m rain batch jobs.csv --ray                                    # a local Ray cluster, one worker per GPU
    python -m rain batch jobs.csv --ray 10.0.0.5:6379 --report report.json # an existing cluster
"""

from __future__ import annotations

import argparse
import sys

from ..animate_options import add_animate_arguments

HELP = "render a job file (CSV/JSON/JSONL) of many videos; --ray spreads it over Ray workers"


def add_parser(commands) -> None:
    batch = commands.add_parser("batch", help=HELP, description=(
        "Render every job of JOBS (columns/keys: reference, driving, output and any animate option; paths relative "
        "to the job file). The animate options given here are the defaults of every job. The whole file is "
        "checked before any model loads; a bad job is reported and skipped. A rerun skips finished jobs and "
        "resumes interrupted ones. Exit code 0: all done; 1: some failed; 2: the job file is unusable; 130: "
        "stopped with Ctrl+C (run again to continue)."))
    batch.add_argument("jobs", help="the job file: .csv, .json or .jsonl")
    batch.add_argument("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",
                       help="render on Ray: alone, a local cluster started for this run; with an address (from "
                            "`ray start --head`), that cluster (default: in this process, no Ray)")
    batch.add_argument("--workers", type=int, default=None,
                       help="Ray workers (default: one per GPU, else one per --threads CPU cores)")
    batch.add_argument("--threads", type=int, default=None,
                       help="torch threads per CPU worker (default: half the cores with Ray, torch's choice without)")
    batch.add_argument("--report", default=None, metavar="FILE",
                       help="write a JSON report: per job status, frames, seconds, frames/s, node and GPU, what it "
                            "resumed from, the error (default: none; the summary table is printed either way)")
    batch.add_argument("--max-tries", type=int, default=3,
                       help="give a job up after its worker died this many times")
    add_animate_arguments(batch.add_argument_group("animate options (the defaults of every job)"),
                          batch_defaults=True)


ANIMATE_DESTS = ("jobs", "ray", "workers", "threads", "report", "max_tries", "command", "verbose")


def run(args) -> int:
    from tqdm import tqdm

    from .driver import FarmUnavailable, run_batch, summary_table
    from .jobs import JobFileError, load_jobs

    defaults = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in ANIMATE_DESTS})
    try:
        job_list = load_jobs(args.jobs, defaults)
    except JobFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for job in job_list.bad:
        print(f"error: {job.where}: {job.problem} (skipped)", file=sys.stderr)
    done_before = [job for job in job_list.jobs if job.state == "done" and job.problem is None]
    if done_before:
        print(f"{len(done_before)} job(s) finished earlier: skipped ({', '.join(j.where for j in done_before)})")
    resumed = [job for job in job_list.runnable if job.state == "resume"]
    if resumed:
        print(f"{len(resumed)} interrupted job(s) continue from their saved state")

    bar = tqdm(total=0, unit="frame", desc="batch", dynamic_ncols=True)

    def progress(state):
        bar.total = max(state.frames_total, state.frames_done)
        bar.n = state.frames_done
        bar.set_postfix_str(f"{state.jobs_done}/{state.jobs_total} jobs", refresh=False)
        bar.refresh()

    def finished(entry):
        rate = f", {entry['frames_per_second']:.2f} frames/s" if entry.get("frames_per_second") else ""
        resumed_from = f", resumed after frame {entry['resumed_from']}" if entry.get("resumed_from") else ""
        text = (f"{entry['where']}: {entry['status']}, {entry.get('frames') or 0} frames in "
                f"{entry.get('seconds') or 0:.1f} s{rate}{resumed_from}")
        if entry["status"] != "done" and entry.get("error"):
            text += f": {str(entry['error']).splitlines()[0]}"
        bar.write(text)

    try:
        result = run_batch(job_list, ray_address=args.ray, workers=args.workers, threads=args.threads,
                           report=args.report, on_progress=progress, on_finished=finished, max_tries=args.max_tries)
    except FarmUnavailable as error:
        bar.close()
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    print(summary_table(result))
    if args.report:
        print(f"report: {args.report}")
    if result.interrupted:
        print("stopped: every running job saved its state; run the same command again to continue",
              file=sys.stderr)
    return result.exit_code

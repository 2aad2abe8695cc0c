"""Job files: a list of renders, each ``reference`` + ``driving`` + ``output`` and any option ``animate`` has.

``.csv`` (a header row, one job per row), ``.json`` (a list of objects, or ``{"jobs": [...]}``) or ``.jsonl``
(one object per line). Keys are animate's option names with ``_`` or ``-`` (``frames_per_group``,
``frames-per-group``) or the short ``output``; paths are relative to the job file's folder. The options given to
``batch`` on the command line are the defaults of every job. Everything is checked here, before any model loads:
each bad job is reported with its number and what to fix, and left out; the others run.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..animate_options import PATH_OPTIONS, add_animate_arguments

SUFFIXES = (".csv", ".json", ".jsonl")
#: animate options a job may not set: the farm decides them (resume: a saved state is always continued).
FARM_DECIDES = ("resume",)
TRUE, FALSE = ("1", "true", "yes", "y", "on"), ("0", "false", "no", "n", "off", "")


class JobFileError(ValueError):
    """The job file itself cannot be used (missing, unreadable, wrong format, no job): exit code 2."""


class JobError(ValueError):
    """One job is wrong; the message says which and what to fix."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # argparse would print and exit; a job's error is reported with its number
        raise JobError(message)


def job_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="job", add_help=False, exit_on_error=False)
    add_animate_arguments(parser)
    return parser


def _options(parser) -> dict[str, argparse.Action]:
    """dest → action of every animate option a job may set."""
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in FARM_DECIDES}


@dataclass
class Job:
    """One checked render: its number in the file (1-based), the animate arguments, and what was found."""
    number: int
    args: argparse.Namespace
    where: str = ""                  # "job 3 (line 4)"
    expected_frames: int | None = None
    state: str = "todo"              # todo | done (finished earlier) | resume (a saved state to continue)
    problem: str | None = None       # why it is left out, when it is

    @property
    def output(self) -> Path:
        return Path(self.args.output)

    def describe(self) -> str:
        return f"{self.where} ({Path(self.args.driving).name} → {self.output.name})"

    def entry(self, status: str, error: str | None = None, **fields) -> dict:
        """This job's line in the report; ``fields`` fill in what a render measured."""
        return {"job": self.number, "where": self.where, "reference": str(getattr(self.args, "reference", "?")),
                "driving": str(getattr(self.args, "driving", "?")), "output": str(self.args.output),
                "status": status, "error": error, "frames": 0, "seconds": 0.0, "frames_per_second": None,
                "node": None, "gpu": None, "resumed_from": 0, **fields}


@dataclass
class JobList:
    path: Path
    jobs: list[Job] = field(default_factory=list)

    @property
    def runnable(self) -> list[Job]:
        return [job for job in self.jobs if job.problem is None and job.state != "done"]

    @property
    def bad(self) -> list[Job]:
        return [job for job in self.jobs if job.problem is not None]


def read_rows(path: Path) -> list[tuple[str, dict]]:
    """[(where, raw row)] of a job file, or JobFileError saying what is wrong with the file."""
    if not path.is_file():
        raise JobFileError(f"job file not found: {path}")
    if path.suffix.lower() not in SUFFIXES:
        raise JobFileError(f"{path}: a job file is .csv, .json or .jsonl, not {path.suffix or 'a file without '}"
                           f"{'' if path.suffix else 'suffix'}")
    try:
        text = path.read_bytes().decode("utf-8-sig")   # Excel writes CSV with a byte-order mark
    except (OSError, UnicodeDecodeError) as error:
        raise JobFileError(f"{path} cannot be read as UTF-8 text ({type(error).__name__}: {error})") from None
    suffix = path.suffix.lower()
    rows: list[tuple[str, dict]] = []
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            raise JobFileError(f"{path} is empty: write a header row (reference,driving,output,…) and a row per job")
        for row in reader:
            if None in row:
                raise JobFileError(f"{path} line {reader.line_num}: more cells than the header has columns")
            if any((value or "").strip() for value in row.values()):
                rows.append((f"line {reader.line_num}", {k.strip(): (v or "").strip() for k, v in row.items()}))
    elif suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((f"line {number}", json.loads(line)))
                except json.JSONDecodeError as error:
                    raise JobFileError(f"{path} line {number} is not JSON ({error.msg}); one object per line") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise JobFileError(f"{path} is not valid JSON ({error.msg}, line {error.lineno})") from None
        if isinstance(data, dict) and isinstance(data.get("jobs"), list):
            data = data["jobs"]
        if not isinstance(data, list):
            raise JobFileError(f"{path}: expected a list of jobs (or {{\"jobs\": [...]}}), found {type(data).__name__}")
        rows = [(f"item {number}", item) for number, item in enumerate(data, 1)]
    if not rows:
        raise JobFileError(f"{path} holds no job")
    return rows


def _argv(row: dict, options: dict[str, argparse.Action], folder: Path) -> list[str]:
    argv = []
    for key, value in row.items():
        dest = str(key).strip().replace("-", "_")
        if value is None or (isinstance(value, str) and not value.strip()):
            continue   # an empty cell: the default (a CSV column only some rows fill)
        if dest in FARM_DECIDES:
            raise JobError(f"'{key}' is decided by batch (an interrupted job always resumes from its saved state); "
                           f"remove the column")
        if dest not in options:
            known = ", ".join(sorted(options))
            raise JobError(f"unknown column/key '{key}'; a job has reference, driving, output and animate's "
                           f"options: {known}")
        action = options[dest]
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            text = str(value).strip().lower()
            if text not in TRUE + FALSE:
                raise JobError(f"{key} = {value!r}: write true or false")
            if text in TRUE:
                argv.append(flag)
            continue
        if isinstance(value, (dict, list)):
            raise JobError(f"{key} = {value!r}: give one value")
        if isinstance(value, bool):
            raise JobError(f"{key} = {value!r}: give a value, not true/false")
        text = str(value)
        if dest in PATH_OPTIONS and not Path(text).is_absolute():
            text = str(folder / text)
        argv.append(f"{flag}={text}")
    return argv


def parse_job(number: int, where: str, row, defaults: argparse.Namespace, folder: Path,
              parser: argparse.ArgumentParser | None = None) -> Job:
    """A job from its raw row: the animate arguments (the batch defaults, then the row), or JobError."""
    parser = parser or job_parser()
    if not isinstance(row, dict):
        raise JobError(f"a job is an object with reference, driving and output, not {type(row).__name__}")
    argv = _argv(row, _options(parser), folder)
    try:
        args = parser.parse_args(argv, namespace=copy.copy(defaults))
    except argparse.ArgumentError as error:
        raise JobError(str(error)) from None
    args.resume = False
    return Job(number, args, where)


def load_jobs(path: str | Path, defaults: argparse.Namespace | None = None) -> JobList:
    """Read and check a job file without loading any model: every job parsed and checked as ``animate`` checks
    its inputs (reference, driving video, output, DWPose or depth files, a saved state's settings), two jobs
    writing one output refused. Bad jobs carry their ``problem``; finished ones are ``done``."""
    path = Path(path)
    return check_jobs(read_rows(path), path, path.resolve().parent, defaults)


def check_jobs(rows: list[tuple[str, dict]], source: Path, folder: Path,
               defaults: argparse.Namespace | None = None) -> JobList:
    """``load_jobs`` for rows from elsewhere (a node's folder of driving videos): relative paths are relative to
    ``folder``; ``source`` names the list in the report."""
    from ..animate import prepare_job
    from ..io import ResumeStore

    defaults = defaults if defaults is not None else argparse.Namespace()
    parser = job_parser()
    listed = JobList(Path(source))
    owners: dict[Path, Job] = {}
    for number, (line, row) in enumerate(rows, 1):
        where = f"job {number} ({line})"
        try:
            job = parse_job(number, where, row, defaults, Path(folder), parser)
        except JobError as error:
            listed.jobs.append(Job(number, argparse.Namespace(output="?", driving="?"), where, problem=str(error)))
            continue
        listed.jobs.append(job)
        output = Path(job.args.output).resolve()
        if output in owners:
            job.problem = f"writes {job.args.output}, as {owners[output].where} does; give each job its own output"
            continue
        owners[output] = job
        store = ResumeStore(job.args.output)
        if store.record() is not None:
            job.state, job.args.resume = "resume", True
        elif Path(job.args.output).exists():
            job.state = "done"
            continue
        try:
            checked = prepare_job(job.args)   # the resume rules apply: a changed input or setting refuses
        except Exception as error:   # each of animate's checks raises one message naming the file
            job.problem = str(error)
            continue
        job.expected_frames = checked.expected_frames
    return listed

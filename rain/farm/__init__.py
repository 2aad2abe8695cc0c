"""The render farm: many long videos rendered from a job file, in this process or on Ray workers, nothing lost.

* ``jobs``   — reading and checking a job file (CSV, JSON, JSONL) before any model loads;
* ``worker`` — ``JobRunner``: models loaded once, job after job through ``rain.animate.render_job`` (the same
  engine as ``animate`` and RAIN Render Video), each job resumed from its saved state; the Ray actor around it;
* ``driver`` — dealing jobs out (longest first), progress, a job whose worker died given to another worker,
  Ctrl+C that saves every running job, the report;
* ``prepare`` — ``prepare-data --ray``: data preparation spread over the same kind of workers.

The CLI (``python -m rain batch``) and the RAIN Batch Render node both use ``load_jobs`` and ``run_batch``.
"""

from .driver import BatchResult, FarmProgress, run_batch, summary_table, write_report
from .jobs import Job, JobError, JobFileError, JobList, check_jobs, load_jobs

__all__ = ["BatchResult", "FarmProgress", "Job", "JobError", "JobFileError", "JobList", "check_jobs", "load_jobs",
           "run_batch", "summary_table", "write_report"]

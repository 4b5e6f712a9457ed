"""The scav-dub pipeline: media files -> the same files with new, dub-like audio tracks.

Dubs paper §6, Fig. 5. The unit of work is one **media file** (every manifest row that
uses it: clips are windows of one file). This module runs the files (resume, records, report);
one file is dubbed by dub/dubbing.py, its plan and output place come from dub/plan.py, the
stages from dub/registry.py. For each file, one fixed sequence::

    skip if done -> decode the original track -> separate speech / background
    -> segment (+ transcribe) -> per target language, per segment:
         translate -> synthesize -> stretch to the segment's duration
         -> convert the voice towards the original segment -> match it to the original segment
       placed at the segment's original start in a silent track of the original's length
    -> remix with the background at the original track's loudness (dub/loudness.py)
    -> mux (every original stream copied, one AAC dub per language)
    -> check (dub/quality.py, on the tracks read back from the new file)
    -> record

- **Original track**: the container's audio stream that extract/decode.py calls original
  (flagged ``original``, else the first not flagged ``dub``), decoded mono at
  ``DubConfig.sample_rate`` over the whole file. New tracks are written at that rate, mono.
- **Outputs** (``out``): ``media/<the row's relative path>`` (``.mp4`` appended unless it is
  one; absolute or ``..`` paths go under ``media/external/``), ``manifest.csv`` (the input rows
  of every finished file, pointing at the new files: ``scav-extract out/manifest.csv`` reads
  every track with its language), ``dub_report.json`` (stage implementations, quality checks
  per file and language, timings, failures), ``failures.csv`` and ``records/`` (one JSON per
  file: what a rerun trusts). Nothing is written outside ``out`` (and ``keep_stages``).
- **Inputs are never written**: an ``out`` (or ``keep_stages``) that equals or contains the
  manifest, a media file or a track file, or lies inside a folder of input media, is refused
  before anything is written (dub/plan.py ``check_out``). One run at a time writes ``out``: it
  holds scav-extract's writer lock (core/writer_lock.py) for the whole run.
- **Resuming**: a file is skipped when every target language is in its output, made with the
  same stage implementations, source language, rate and bit rate (``DubConfig.job_key``, kept
  per language). A run with other targets on the same ``out`` adds them to the earlier output
  (made from it, its other languages kept; a target made again replaces its old track), so
  ``--target fra`` then ``--target deu`` leaves both. Files that failed are recorded too and
  not retried unless ``retry_failed`` (as scav-extract). Every file is written to a temporary
  name and renamed (core/files.py), so a killed run leaves no half file; a rerun redoes only
  the unfinished files and first removes the temporaries dead processes left.
- **Failures** never stop the run: a file that cannot be dubbed (undecodable, a stage error,
  a target language the file already has) becomes a row ``path, language, stage, reason``.
  A file is all or nothing: it is written only when every target language succeeded (an
  earlier output of it stays as it was).
- **Quality checks** (dub/quality.py) are reported, never enforced: a file that fails a check
  is still written (the CLI's ``--strict`` turns them into exit code 1).

Stages that must know which file they work on (the synthetic benchmark's known stems and
known script) implement ``for_media(info: MediaInfo) -> stage``; the pipeline calls it once
per file and uses the stage it returns.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from pathlib import Path

from ..data_manifests.manifest import load_manifest
from .config import DubConfig
from .dubbing import dub_media
from .plan import MediaJob, check_out, media_paths, plan_jobs
from .records import (MEDIA_DIR, REPORT_NAME, REPORT_VERSION, failure_row, read_record, record_path,
                      sweep_stale_tmp, write_json, write_outputs, writer_lock)
from .registry import build_stages, check_languages
from .stages import DubStages, StageError

log = logging.getLogger(__name__)


def run(cfg: DubConfig, stages: DubStages | None = None) -> dict:
    """Dub every pending media file of the manifest into ``cfg.out``; returns a summary dict.

    ``stages``: the implementations to use (tests pass doubles); default built from
    ``cfg.stages``. Raises ValueError / ManifestError / MissingWeights for bad input before
    anything is written; a file that fails is a failure row, never an exception.
    """
    t0 = time.perf_counter()
    cfg.validate()
    rows = load_manifest(cfg.manifest)
    media_root = Path(cfg.media_root) if cfg.media_root is not None else Path(cfg.manifest).resolve().parent
    check_out(cfg.out, cfg.manifest, media_paths(rows, media_root), cfg.keep_stages)
    stages = stages if stages is not None else build_stages(cfg.stages)
    check_languages(stages, cfg.targets)
    names = stages.names()
    job_key = cfg.job_key(names)
    out = Path(cfg.out)
    jobs = plan_jobs(rows, media_root)
    if cfg.limit is not None:
        jobs = jobs[: cfg.limit]
    with writer_lock(out):
        removed = sweep_stale_tmp(out, [j.key for j in jobs])
        if removed:
            log.info("removed %d temporary files left by dead processes", len(removed))
        records, dubbed, new_failures, skipped = _dub_pending(cfg, stages, jobs, media_root, out, job_key)
        return _finish(cfg, out, media_root, jobs, records, names, dubbed, new_failures, skipped, t0)


def resume(rec: dict | None, job: MediaJob, out: Path, job_key: dict, targets: list[str],
           retry_failed: bool) -> tuple[bool, dict | None]:
    """(skip the file?, the earlier done record whose output exists, or None).

    Skipped: every target is in the output, made with ``job_key``; or this very job (targets and
    key) failed before and ``retry_failed`` is off. A done record's other languages are kept.
    """
    if rec is None or rec.get("path") != job.path:
        return False, None
    prev = rec if rec.get("status") == "done" and (out / rec.get("output", "")).is_file() else None
    if prev and all(prev.get("languages", {}).get(t, {}).get("job_key") == job_key for t in targets):
        return True, prev
    if "failure" in rec and not retry_failed and rec.get("failed_job") == {"targets": targets, "job_key": job_key}:
        return True, prev
    return False, prev


def _dub_pending(cfg: DubConfig, stages: DubStages, jobs: list[MediaJob], media_root: Path, out: Path,
                 job_key: dict) -> tuple[dict[str, dict], int, list[dict], int]:
    """Dub every job not done yet; (records by key, files dubbed, new failure rows, files skipped)."""
    from tqdm.auto import tqdm

    targets = list(cfg.targets)
    records: dict[str, dict] = {}
    pending: list[tuple[MediaJob, dict | None]] = []
    for job in jobs:
        rec = read_record(record_path(out, job.key))
        skip, prev = resume(rec, job, out, job_key, targets, cfg.retry_failed)
        if skip:
            records[job.key] = rec
        else:
            pending.append((job, prev))
    log.info("%d media files, %d already done or failed earlier, %d to dub", len(jobs), len(jobs) - len(pending),
             len(pending))
    new_failures: list[dict] = []
    dubbed = 0
    with tqdm(total=len(pending), unit="file", desc="dub", dynamic_ncols=True, disable=not cfg.progress) as bar:
        for job, prev in pending:
            t_file = time.perf_counter()
            try:
                rec = dub_media(job, stages, cfg, media_root, out / MEDIA_DIR / job.key, prev)
                for t in targets:
                    rec["languages"][t]["job_key"] = job_key
                dubbed += 1
            except StageError as e:
                row = failure_row(job, e)
                log.warning("%s: %s failed: %s", job.path, e.stage, e.reason)
                # an earlier output stays what it was (and listed): the failure is noted beside it
                rec = {**(prev or {"status": "failed", "path": job.path}), "failure": row,
                       "failed_job": {"targets": targets, "job_key": job_key}}
                new_failures.append(row)
            rec["seconds"] = round(time.perf_counter() - t_file, 3)
            write_json(record_path(out, job.key), rec)
            records[job.key] = rec
            bar.update(1)
    return records, dubbed, new_failures, len(jobs) - len(pending)


def _finish(cfg: DubConfig, out: Path, media_root: Path, jobs: list[MediaJob], records: dict[str, dict],
            names: dict[str, str], dubbed: int, new_failures: list[dict], skipped: int, t0: float) -> dict:
    """Write the manifest, failures.csv and the report; the run's summary."""
    done = [job for job in jobs if records[job.key]["status"] == "done"]
    failures = [records[job.key]["failure"] for job in jobs if "failure" in records[job.key]]
    manifest_path = write_outputs(cfg, out, media_root, done, failures)
    quality_rows = [{"path": records[j.key]["path"], "output": records[j.key]["output"], "language": lang,
                     "passed": v["passed"], "checks": v["checks"]}
                    for j in done for lang, v in records[j.key]["languages"].items()]
    timings: Counter = Counter()
    for j in jobs:
        timings.update(records[j.key].get("timings", {}))
    seconds = time.perf_counter() - t0
    summary = {
        "stages": names,
        "targets": list(cfg.targets),
        "sample_rate": cfg.sample_rate,
        "files": len(jobs),
        "clips": sum(len(j.rows) for j in jobs),
        "already_done": skipped,
        "dubbed": dubbed,
        "done": len(done),
        "failed": len(failures),
        "failed_now": len(new_failures),
        "failed_by_stage": dict(sorted(Counter(f["stage"] for f in failures).items())),
        "failures": failures,
        "quality": quality_rows,
        "quality_failed": sum(not q["passed"] for q in quality_rows),
        "timings": {k: round(v, 3) for k, v in sorted(timings.items())},
        "seconds": round(seconds, 3),
        "out": str(out),
        "manifest": str(manifest_path),
        "report": str(out / REPORT_NAME),
    }
    report = {"version": REPORT_VERSION, **{k: summary[k] for k in ("stages", "targets", "sample_rate")},
              "config": {"source_language": cfg.source_language, "bit_rate": cfg.bit_rate,
                         "onset_tolerance": cfg.onset_tolerance, "loudness_tolerance": cfg.loudness_tolerance,
                         "min_background_correlation": cfg.min_background_correlation,
                         "options": {k: str(v) if isinstance(v, Path) else v
                                     for k, v in dataclasses.asdict(cfg.stages).items()}},
              "summary": {k: v for k, v in summary.items() if k not in ("failures", "quality")},
              "files": {j.key: records[j.key] for j in jobs}, "failures": failures}
    write_json(out / REPORT_NAME, report)
    return summary



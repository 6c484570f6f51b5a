"""``ddpm-hf distill``'s runs: one (progressive, consistency, or distribution matching of a given student), or, for
the default distribution matching without --init_student, two phases in one command: progressive distillation to K
steps in OUTPUT_DIR/progressive, then distribution matching of that student in OUTPUT_DIR. Each phase is a run of
its own (``loop.distill_run``: checkpoints, history, records), so a stop in either resumes where it was with the
same command and --resume_from_checkpoint latest: a finished first phase (its metrics.json) is not run again."""

import dataclasses
import os

from ..errors import OutputDirError
from ..run_dir import METRICS, read_metrics, run_files
from .config import PROGRESSIVE_FOLDER


def distill(config):
    """Run ``config`` (a DistillConfig), its progressive phase first when it has one; returns the last run's metrics
    (with ``progressive_seconds``, the first phase's time, when there were two; its model card states both).
    Raises RunError, OutputDirError, Interrupted (a checkpoint of the phase that was running)."""
    from .loop import distill_run

    first = config.progressive
    if first is None:
        return distill_run(config)
    done = os.path.isfile(os.path.join(first.student.output_dir, METRICS))
    check_output_dir(config)
    if not done or config.student.overwrite_output_dir:
        distill_run(first, last=False)
    second = dataclasses.replace(config, student=dataclasses.replace(
        config.student, resume_from_checkpoint=config.student.resume_from_checkpoint if done else None))
    metrics = distill_run(second, keep=(PROGRESSIVE_FOLDER,))  # its card reads the first phase's seconds
    return {**metrics, "progressive_seconds": read_metrics(first.student.output_dir).get("distill_seconds")}


def check_output_dir(config):
    """Before either phase runs: OutputDirError when OUTPUT_DIR already holds a run (of either phase) and neither
    --overwrite_output_dir nor --resume_from_checkpoint is given, as a training run's check would say it."""
    student = config.student
    if student.overwrite_output_dir or student.resume_from_checkpoint:
        return
    held = run_files(student.output_dir) + ([PROGRESSIVE_FOLDER] if os.path.isdir(
        config.progressive.student.output_dir) else [])
    if held:
        raise OutputDirError("{output_dir} {out} already holds a distillation run ({held}): add "
                             "{resume_from_checkpoint} latest to continue it, {overwrite_output_dir} to replace it, "
                             "or choose another {output_dir}", out=student.output_dir, held=", ".join(held))

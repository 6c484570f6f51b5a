"""Distillation time against the teacher's training time on the same machine (issue 31's time goal): the `make demo`
training run and `ddpm-hf distill` of a finished teacher, one thread each, one after the other (default: each sees
the same background load) or started together (--together: both share the machine at once); prints each one's loop
seconds (metrics.json), their ratio, and each one's median and longest step (history.jsonl), so that a stall of
the machine during one of them shows instead of passing for the method's cost.

    python benchmarks/bench_distill_time.py --teacher outputs/demo --output_dir outputs/bench-distill-time \\
        [--distill_args "--max_train_steps 1200 --learning_rate 3e-4"] [--together]

The fresh training run writes OUTPUT_DIR/train (same flags as `make demo`); the student OUTPUT_DIR/student.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="outputs/demo", help="a finished teacher to distil (default outputs/demo)")
    p.add_argument("--output_dir", default="outputs/bench-distill-time")
    p.add_argument("--distill_args", default="", help="extra flags of ddpm-hf distill")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of each process (default 1)")
    p.add_argument("--together", action="store_true", help="start both at once instead of one after the other")
    args = p.parse_args()
    cli = [sys.executable, "-m", "ddpm_hf.cli"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    train_dir, student_dir = (os.path.join(args.output_dir, name) for name in ("train", "student"))
    commands = {
        "teacher training (make demo)": cli + ["train", "--output_dir", train_dir, "--overwrite_output_dir",
                                               "--logger", "none"],
        "distillation": cli + ["distill", args.teacher, "--output_dir", student_dir, "--overwrite_output_dir",
                               "--logger", "none", *shlex.split(args.distill_args)],
    }
    processes = {}
    for name, command in commands.items():
        processes[name] = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                           text=True)
        if not args.together:
            finish(name, processes[name])
    if args.together:
        for name, process in processes.items():
            finish(name, process)
    with open(os.path.join(train_dir, "metrics.json")) as f:
        train = json.load(f)
    with open(os.path.join(student_dir, "metrics.json")) as f:
        student = json.load(f)
    print(f"{'together' if args.together else 'one after the other'}, {args.threads} thread(s) each")
    print("| run | steps x batch | loop seconds | / teacher training | median step s | longest step s |")
    print("|---|---|---|---|---|---|")
    for name, folder, metrics, seconds in (("teacher training", train_dir, train, train["train_seconds"]),
                                           ("distillation", student_dir, student, student["distill_seconds"])):
        median, longest = step_seconds(folder)
        print(f"| {name} | {metrics['steps']} x {metrics['images_seen'] // metrics['steps']} | {seconds:.0f} | "
              f"{seconds / train['train_seconds']:.2f} | {median:.3f} | {longest:.2f} |")


def finish(name, process):
    """Wait for ``process``; exit with its stderr's tail if it failed."""
    _, err = process.communicate()
    if process.returncode:
        sys.exit(f"{name} failed:\n{err[-3000:]}")


def step_seconds(folder):
    """(median, longest) seconds of one optimizer step in ``folder``'s history.jsonl (its cumulative "seconds")."""
    import statistics

    with open(os.path.join(folder, "history.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    seconds = [r["seconds"] for r in rows if "seconds" in r and "loss" in r]
    steps = [b - a for a, b in zip(seconds, seconds[1:])]
    return statistics.median(steps), max(steps)


if __name__ == "__main__":
    main()

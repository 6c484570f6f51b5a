"""Distillation time against the teacher's training time on the same machine (issue 31's time goal): the `make demo`
training run and `ddpm-hf distill` of a finished teacher, one thread each, one after the other (default: each sees
the same background load) or started together (--together: both share the machine at once); prints each one's loop
seconds (metrics.json), their ratio, and each one's median and longest step (history.jsonl), so that a stall of
the machine during one of them shows instead of passing for the method's cost.

    python benchmarks/bench_distill_time.py --teacher outputs/demo --output_dir outputs/bench-distill-time \\
        [--distill_args "--max_train_steps 1200 --learning_rate 3e-4"] [--together]

The fresh training run writes OUTPUT_DIR/train (same flags as `make demo`); the student OUTPUT_DIR/student. Several
--distill_args run one distillation after the other (OUTPUT_DIR/student, student-2, ...; ``{previous}`` in one stands
for the previous one's folder, e.g. a progressive run then distribution matching of its ``{previous}/rounds/4-step``),
timed as one: the table gives each and their sum. The default command's two phases (progressive/ then distribution
matching) are two rows.
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
    p.add_argument("--distill_args", action="append", default=None,
                   help="extra flags of ddpm-hf distill; given again, a second distillation after the first "
                   "({previous}: the previous one's output folder)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of each process (default 1)")
    p.add_argument("--together", action="store_true", help="start both at once instead of one after the other")
    args = p.parse_args()
    cli = [sys.executable, "-m", "ddpm_hf.cli"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    train_dir = os.path.join(args.output_dir, "train")
    student_dirs, chain = [], []
    for i, extra in enumerate(args.distill_args or [""]):
        student_dirs.append(os.path.join(args.output_dir, "student" if i == 0 else f"student-{i + 1}"))
        extra = extra.replace("{previous}", student_dirs[-2]) if i else extra
        chain.append(cli + ["distill", args.teacher, "--output_dir", student_dirs[-1], "--overwrite_output_dir",
                            "--logger", "none", *shlex.split(extra)])
    commands = {
        "teacher training (make demo)": cli + ["train", "--output_dir", train_dir, "--overwrite_output_dir",
                                               "--logger", "none"],
        "distillation": ["sh", "-c", " && ".join(shlex.join(c) for c in chain)],
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
    rows = [("teacher training", train_dir, train, train["train_seconds"])]
    for folder in student_dirs:  # the default command's first phase (progressive/) is a row of its own
        first = os.path.join(folder, "progressive")
        for run in [first, folder] if os.path.isdir(first) else [folder]:
            with open(os.path.join(run, "metrics.json")) as f:
                student = json.load(f)
            rows.append((f"distillation ({student['method']})", run, student, student["distill_seconds"]))
    print(f"{'together' if args.together else 'one after the other'}, {args.threads} thread(s) each")
    print("| run | steps x batch | loop seconds | / teacher training | median step s | longest step s |")
    print("|---|---|---|---|---|---|")
    for name, folder, metrics, seconds in rows:
        median, longest = step_seconds(folder)
        print(f"| {name} | {metrics['steps']} x {metrics['images_seen'] // metrics['steps']} | {seconds:.0f} | "
              f"{seconds / train['train_seconds']:.2f} | {median:.3f} | {longest:.2f} |")
    if len(rows) > 2:
        total = sum(r[3] for r in rows[1:])
        print(f"| distillation, all | | {total:.0f} | **{total / train['train_seconds']:.2f}** | | |")


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

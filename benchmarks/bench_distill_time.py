"""Distillation time against the teacher's training time, measured side by side (issue 31's time goal): the
`make demo` training run and `ddpm-hf distill` of a finished teacher, started together, one thread each, so that
both see the same machine and the same load; prints each one's loop seconds (metrics.json) and their ratio.

    python benchmarks/bench_distill_time.py --teacher outputs/demo --output_dir outputs/bench-distill-time \\
        [--distill_args "--max_train_steps 1200 --learning_rate 3e-4"]

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
    processes = {name: subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True) for name, command in commands.items()}
    for name, process in processes.items():
        _, err = process.communicate()
        if process.returncode:
            sys.exit(f"{name} failed:\n{err[-3000:]}")
    with open(os.path.join(train_dir, "metrics.json")) as f:
        train = json.load(f)
    with open(os.path.join(student_dir, "metrics.json")) as f:
        student = json.load(f)
    ratio = student["distill_seconds"] / train["train_seconds"]
    print("| run | steps x batch | loop seconds | / teacher training |")
    print("|---|---|---|---|")
    print(f"| teacher training | {train['steps']} x {train['images_seen'] // train['steps']} | "
          f"{train['train_seconds']:.0f} | 1.00 |")
    print(f"| distillation | {student['steps']} x {student['images_seen'] // student['steps']} | "
          f"{student['distill_seconds']:.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()

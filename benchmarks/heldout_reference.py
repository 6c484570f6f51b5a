"""The recipe search's finished runs scored against the 180 held-out digits only (digits no model trained on) and
against the 1,617 training digits only, beside the usual all-1,797 score (BENCHMARKS.md, "Training recipe search"):
a model nearer its training digits than real digits are scores lower against the training digits, not against the
held-out ones. Reads the cached dpmsolver-sde@20 samples that benchmarks/recipe_search.py wrote, e.g.

    python benchmarks/heldout_reference.py outputs/search beta09 small_eqtime plain

The 180-digit reference is small for 128-d features: its floor (from disjoint splits of 90, scaled to N = 1,000) is
an extrapolation, so compare models with each other on it rather than with its floor.
"""

import argparse
import glob
import os

import numpy as np
import torch

from ddpm_hf.evaluation.digits import digits_arrays, digits_metric, load_digits_classifier


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_dir")
    p.add_argument("variants", nargs="+")
    p.add_argument("--samples", default="run-dpmsolver-sde@20-n1000-seed0.npz")
    args = p.parse_args()
    classifier = load_digits_classifier()
    references = {"180 held-out digits": digits_arrays("test")[0], "1,617 training digits": digits_arrays("train")[0]}
    print("| variant | seed | " + " | ".join(f"FD vs {k} (floor)" for k in references) + " |")
    print("|---|---|" + "---|" * len(references))
    for name in args.variants:
        for path in sorted(glob.glob(os.path.join(args.output_dir, name, "s*", "samples", args.samples))):
            with np.load(path) as z:
                images = torch.as_tensor(z[list(z.keys())[0]])
            cells = []
            for reference in references.values():
                score = digits_metric(images, reference, classifier=classifier)
                cells.append(f"{score['digits_fd']:.3f} ({score['digits_fd_floor']:.3f} +- "
                             f"{score['digits_fd_floor_std']:.3f})")
            print(f"| {name} | {path.split(os.sep)[-3]} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

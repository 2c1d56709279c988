"""Write the two files a leaderboard hands out, for the digit images of make_digit_images.py, so that the
README's competition workflow runs without downloading anything:

    python scripts/make_competition_files.py outputs/digit_images

    <dir>/test.csv               columns id, file: each validation image (<dir>/val/...) under an id of its own
                                 (img_<n>), in a shuffled order (the "unlabelled test set")
    <dir>/sample_submission.csv  columns id, label: the same ids in another order, label 0 everywhere

A real competition gives both; `python -m trainer.predict ... sample_submission=<dir>/sample_submission.csv`
writes its columns in its row order.
"""

import argparse
import csv
import os
import random


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the folder make_digit_images.py wrote (it holds val/)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    val = os.path.join(args.root, "val")
    if not os.path.isdir(val):
        raise SystemExit(f"error: {val} does not exist; run python scripts/make_digit_images.py {args.root} first")
    files = sorted(os.path.relpath(os.path.join(folder, name), args.root)
                   for folder, _, names in os.walk(val) for name in names if name.endswith((".png", ".jpg")))
    ids = {path: f"img_{n:04d}" for n, path in enumerate(files)}
    rng = random.Random(args.seed)
    test_order, sample_order = files[:], files[:]
    rng.shuffle(test_order)
    rng.shuffle(sample_order)
    with open(os.path.join(args.root, "test.csv"), "w", newline="") as f:
        csv.writer(f).writerows([("id", "file")] + [(ids[path], path) for path in test_order])
    with open(os.path.join(args.root, "sample_submission.csv"), "w", newline="") as f:
        csv.writer(f).writerows([("id", "label")] + [(ids[path], 0) for path in sample_order])
    print(f"wrote test.csv and sample_submission.csv in {args.root} ({len(files)} images)")


if __name__ == "__main__":
    main()

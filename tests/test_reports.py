"""Per-class report and confusion matrix against scikit-learn and hand counts; the files; evaluate's output."""

import csv
import io
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from rich.console import Console
from sklearn import metrics as skm

from conftest import read_csv, read_json, run_module
from trainer.reporting.class_reports import confusion, confusion_figure, per_class_report, print_reports, write_reports

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def random_case(n, c, seed, classes=None):
    rng = np.random.default_rng(seed)
    y = rng.choice(np.arange(c) if classes is None else np.asarray(classes), size=n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += 1.5
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, prob


def names_for(c):
    return [f"class {i}" for i in range(c)]


def hand_confusion(y, pred, c):
    counts = np.zeros((c, c), dtype=int)
    np.add.at(counts, (y, pred), 1)
    return counts


def assert_rows_match_classification_report(rows, y, prob, names):
    c = prob.shape[1]
    expected = skm.classification_report(
        y, prob.argmax(axis=1), labels=np.arange(c), target_names=names, output_dict=True, zero_division=0
    )
    assert [row["class"] for row in rows] == list(names) + ["macro avg", "weighted avg"]
    for row in rows:
        reference = expected[row["class"]]
        for key, ref_key in [("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")]:
            assert row[key] == pytest.approx(reference[ref_key], rel=1e-12, abs=1e-15), (row["class"], key)
        assert row["support"] == reference["support"]
        assert isinstance(row["support"], int)


CASES = {
    "balanced": dict(n=200, c=5, seed=0),
    "imbalanced": dict(n=150, c=4, seed=1, classes=[0] * 20 + [1] * 3 + [2, 3]),
    "absent_class": dict(n=80, c=6, seed=2, classes=[0, 1, 3, 5]),
    "binary": dict(n=60, c=2, seed=3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_per_class_report_equals_classification_report(case):
    y, prob = random_case(**CASES[case])
    names = names_for(prob.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zero_division=0: an empty class is 0, quietly
        rows = per_class_report(y, prob, names)
    assert_rows_match_classification_report(rows, y, prob, names)
    assert rows[-1]["support"] == rows[-2]["support"] == len(y)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), c=st.integers(2, 8), seed=st.integers(0, 2**32 - 1))
def test_property_per_class_report_and_confusion(n, c, seed):
    y, prob = random_case(n, c, seed)
    names = names_for(c)
    rows = per_class_report(y, prob, names)
    assert_rows_match_classification_report(rows, y, prob, names)
    counts = confusion(y, prob)
    np.testing.assert_array_equal(counts, hand_confusion(y, prob.argmax(axis=1), c))
    # the report's recall and precision are the confusion matrix's diagonal over its rows and columns
    diagonal = np.diag(counts)
    for i, row in enumerate(rows[:c]):
        assert row["support"] == counts[i].sum()
        assert row["recall"] == pytest.approx(diagonal[i] / counts[i].sum() if counts[i].sum() else 0.0)
        assert row["precision"] == pytest.approx(diagonal[i] / counts[:, i].sum() if counts[:, i].sum() else 0.0)


def test_report_by_hand_on_the_seed_notes_example():
    # y_true = [0, 1, 2, 0, 1, 2], y_pred = [0, 2, 1, 0, 0, 1]
    y = np.array([0, 1, 2, 0, 1, 2])
    prob = np.eye(3)[[0, 2, 1, 0, 0, 1]] * 0.5 + 0.1
    rows = per_class_report(y, prob, ["cat", "dog", "pig"])
    # cat: tp 2, predicted 3, true 2 -> p 2/3, r 1, f1 0.8; dog and pig: tp 0
    assert rows[0] == {"class": "cat", "precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8), "support": 2}
    assert rows[1] == {"class": "dog", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert rows[3]["class"] == "macro avg" and rows[3]["f1"] == pytest.approx(0.8 / 3)
    assert rows[4]["class"] == "weighted avg" and rows[4]["precision"] == pytest.approx((2 / 3) * 2 / 6)
    np.testing.assert_array_equal(confusion(y, prob), [[2, 0, 0], [1, 0, 1], [0, 2, 0]])


def test_a_class_nobody_has_still_gets_its_row_and_column():
    y = np.array([0, 0, 1, 1])
    prob = np.eye(4)[[0, 1, 1, 1]]
    rows = per_class_report(y, prob, ["a", "b", "c", "d"])
    assert [r["class"] for r in rows[:4]] == ["a", "b", "c", "d"]
    assert rows[2] == rows[3] | {"class": "c"} == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert confusion(y, prob).shape == (4, 4)
    np.testing.assert_array_equal(confusion(y, prob), skm.confusion_matrix(y, [0, 1, 1, 1], labels=range(4)))


def test_confusion_equals_sklearn():
    y, prob = random_case(n=300, c=7, seed=5, classes=[0, 1, 2, 4, 6])
    expected = skm.confusion_matrix(y, prob.argmax(axis=1), labels=np.arange(7))
    np.testing.assert_array_equal(confusion(y, prob), expected)
    assert confusion(y, prob).sum() == 300


def test_class_names_must_match_the_classes():
    y, prob = random_case(n=10, c=3, seed=6)
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        per_class_report(y, prob, ["a", "b"])


# --- the console -----------------------------------------------------------------------------
def test_print_reports_shows_both_tables():
    y = np.array([0, 1, 2, 0, 1, 2, 2])
    prob = np.eye(3)[[0, 2, 1, 0, 0, 1, 2]] * 0.5 + 0.1
    console = Console(record=True, width=120, file=io.StringIO())
    print_reports(console, y, prob, ["cat", "dog", "pig"])
    text = console.export_text()
    assert "per-class report" in text and "confusion matrix" in text
    lines = text.splitlines()

    def cells(first):
        # the table line whose first cell is `first`, split into its cells
        row = next(line for line in lines if line.strip("│ ").startswith(first + " "))
        return [cell.strip() for cell in row.strip("│").split("│")]

    # cat: tp 2 of 3 predicted, 2 true; dog: tp 0; pig: tp 1 of 2 predicted, 3 true
    assert cells("cat")[:5] == ["cat", "0.6667", "1.0000", "0.8000", "2"]
    assert cells("pig")[:5] == ["pig", "0.5000", "0.3333", "0.4000", "3"]
    assert cells("macro avg") == ["macro avg", "0.3889", "0.4444", "0.4000", "7"]
    confusion_rows = [line for line in lines if line.strip("│ ").startswith(("cat ", "dog ", "pig "))][3:]
    assert [[cell.strip() for cell in row.strip("│").split("│")] for row in confusion_rows] == [
        ["cat", "2", "0", "0"],
        ["dog", "1", "0", "1"],
        ["pig", "0", "2", "1"],
    ]


# --- files -----------------------------------------------------------------------------------
@pytest.mark.parametrize("c", [2, 10, 30])
def test_write_reports_files(tmp_path, c):
    y, prob = random_case(n=40 * c, c=c, seed=c)
    names = [f"c{i}" for i in range(c)] if c != 10 else [f"a long class name {i}" for i in range(c)]
    directory = tmp_path / "new" / "dir"  # created when missing
    paths = write_reports(str(directory), y, prob, names, prefix="best.")
    assert paths == [str(directory / f"best.{name}") for name in
                     ("per_class.csv", "per_class.json", "confusion_matrix.csv", "confusion_matrix.png")]
    rows = per_class_report(y, prob, names)

    written = read_csv(directory / "best.per_class.csv")
    assert list(written[0]) == ["class", "precision", "recall", "f1", "support"]
    assert [r["class"] for r in written] == [r["class"] for r in rows]
    for got, row in zip(written, rows):
        assert float(got["f1"]) == row["f1"] and float(got["precision"]) == row["precision"]
        assert float(got["recall"]) == row["recall"] and int(got["support"]) == row["support"]
    assert read_json(directory / "best.per_class.json") == rows

    with open(directory / "best.confusion_matrix.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["true \\ predicted", *names]
    assert [r[0] for r in table[1:]] == names
    np.testing.assert_array_equal(np.array([r[1:] for r in table[1:]], dtype=int), confusion(y, prob))

    png = directory / "best.confusion_matrix.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        width, height = image.size
        colours = len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [])
    # big enough to read every cell (~25 px or more per class), not absurdly large
    assert 300 <= width <= 2500 and 300 <= height <= 2500, (width, height)
    assert min(width, height) >= 25 * c
    assert colours > 20  # a drawing, not a blank canvas


def test_confusion_figure_shows_counts_where_they_belong():
    counts = np.array([[5, 1, 0], [2, 0, 0], [0, 3, 9]])  # class "b" was never predicted right
    figure = confusion_figure(counts, ["a", "b", "c"])
    axes = figure.axes[0]
    # each count annotated at column = predicted, row = true
    annotated = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in axes.texts}
    assert annotated == {(i, j): str(counts[i, j]) for i in range(3) for j in range(3)}
    assert [t.get_text() for t in axes.get_xticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in axes.get_yticklabels()] == ["a", "b", "c"]
    assert axes.get_xlabel() == "predicted class" and axes.get_ylabel() == "true class"
    # colours: each true class's share, so a small class is as visible as a big one
    np.testing.assert_allclose(axes.images[0].get_array(), counts / counts.sum(axis=1, keepdims=True))
    # an empty row (a class absent from the split) is drawn as zeros, not NaN
    empty = confusion_figure(np.array([[0, 0], [1, 3]]), ["a", "b"]).axes[0].images[0].get_array()
    np.testing.assert_allclose(empty, [[0, 0], [0.25, 0.75]])


def test_write_reports_default_prefix(tmp_path):
    y, prob = random_case(n=30, c=3, seed=9)
    paths = write_reports(str(tmp_path), y, prob, ["x", "y", "z"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["per_class.csv", "per_class.json", "confusion_matrix.csv", "confusion_matrix.png"]
    )
    assert all(path.startswith(str(tmp_path)) for path in paths)


def test_png_is_drawn_without_pyplot(tmp_path):
    # the Agg canvas is used directly: no global backend switch and no pyplot figure left open
    import subprocess
    import sys

    from conftest import cli_env

    code = (
        "import sys, numpy as np\n"
        "from trainer.reporting.class_reports import write_reports\n"
        f"write_reports({str(tmp_path)!r}, np.array([0, 1]), np.eye(2), ['a', 'b'])\n"
        "print('PYPLOT', 'matplotlib.pyplot' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "PYPLOT False" in out.stdout


# --- through the command line ----------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_prints_and_writes_the_reports(tmp_path):
    run_dir = tmp_path / "run"
    trained = run_module("trainer", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    checkpoints = run_dir / "checkpoints"
    result = run_module("trainer.evaluate", f"ckpt_path={checkpoints / 'best.ckpt'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    assert "per-class report" in result.stdout and "confusion matrix" in result.stdout
    assert "macro avg" in result.stdout and "weighted avg" in result.stdout
    for name in ["per_class.csv", "per_class.json", "confusion_matrix.csv", "confusion_matrix.png"]:
        assert f"written: {checkpoints / ('best.' + name)}" in result.stdout
        assert (checkpoints / f"best.{name}").stat().st_size > 0
    assert (checkpoints / "best.confusion_matrix.png").read_bytes()[:8] == PNG_SIGNATURE

    # reports and metrics come from the same predictions
    rows = read_csv(checkpoints / "best.per_class.csv")
    assert [r["class"] for r in rows] == [str(i) for i in range(10)] + ["macro avg", "weighted avg"]
    metrics = read_json(checkpoints / "best.metrics.json")["metrics"]
    assert float(rows[-2]["f1"]) == pytest.approx(metrics["val/f1"], abs=1e-12)  # every digit is in the split
    assert float(rows[-1]["recall"]) == pytest.approx(metrics["val/accuracy"], abs=1e-12)
    with open(checkpoints / "best.confusion_matrix.csv", newline="") as f:
        counts = np.array([r[1:] for r in list(csv.reader(f))[1:]], dtype=int)
    assert counts.sum() == int(rows[-1]["support"]) == 360  # 20% of the 1,797 digits
    assert np.trace(counts) / counts.sum() == pytest.approx(metrics["val/accuracy"])

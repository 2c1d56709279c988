"""What predict writes: the submission format a leaderboard asks for.

One row per image: an id, the predicted label (a class name or index; regression: the value) and,
unless `probabilities=false`, one probability column per class. The ids are the paths as given (the
default), the file names with or without extension, or the values of a column of the input CSV. Rows
keep the input's order (a CSV's rows, a folder's sorted files), or a sample submission's: its first
column names the ids and gives their order, its other columns are either class names (probabilities,
in its column order) or the one label column; its ids and the input's must be the same set.

The settings are checked (and the CSVs' headers read) before torch is imported.
"""

import csv
import os
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from trainer.errors import UserError

ID_VALUES = ("path", "name", "stem", "column")
LABELS = ("name", "index")
DEFAULT_LABEL_COLUMN = "prediction"


@dataclass
class Sample:
    path: str
    columns: List[str]
    ids: List[str]


def read_table(path: str, key: str):
    """(rows as dicts, column names) of a CSV file, or one message naming the setting."""
    if not os.path.isfile(path):
        raise UserError(f"{key}={path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: spreadsheets write a BOM
            reader = csv.DictReader(f)
            return list(reader), list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{key}={path} is not a readable CSV file: {err}") from None


def check_format(cfg) -> Optional[Sample]:
    """Refuse a bad submission setting at once; the sample submission, when one is given."""
    if cfg.id_values not in ID_VALUES:
        raise UserError(f"id_values={cfg.id_values} is not valid; use one of: {', '.join(ID_VALUES)}")
    if cfg.labels not in LABELS:
        raise UserError(f"labels={cfg.labels} is not valid; use one of: {', '.join(LABELS)}")
    csv_input = os.path.isfile(cfg.input) and cfg.input.lower().endswith(".csv")
    if cfg.id_values == "column":
        if cfg.input_id_column is None:
            raise UserError("id_values=column needs input_id_column=<a column of the input CSV> whose values are the ids")
        if not csv_input:
            raise UserError(f"id_values=column reads the ids from the input CSV, but input={cfg.input} is not a .csv file")
        _, columns = read_table(cfg.input, "input")
        if cfg.input_id_column not in columns:
            raise UserError(f"input_id_column={cfg.input_id_column} is not a column of input={cfg.input}; its columns are: "
                            f"{', '.join(columns)}")
    elif cfg.input_id_column is not None:
        raise UserError(f"input_id_column={cfg.input_id_column} is only read with id_values=column (now id_values="
                        f"{cfg.id_values}); set id_values=column, or leave input_id_column out")
    if cfg.sample_submission is None:
        return None
    rows, columns = read_table(cfg.sample_submission, "sample_submission")
    if len(columns) < 2 or not rows:
        raise UserError(f"sample_submission={cfg.sample_submission} needs a header of at least two columns (the ids, then "
                        f"a label column or one column per class) and one row per id; it has columns "
                        f"[{', '.join(columns)}] and {len(rows)} row(s)")
    if cfg.id_column is not None and cfg.id_column != columns[0]:
        raise UserError(f"id_column={cfg.id_column} differs from sample_submission's id column '{columns[0]}'; leave "
                        "id_column out (the sample names it) or make them agree")
    if cfg.label_column is not None and cfg.label_column not in columns[1:]:
        raise UserError(f"label_column={cfg.label_column} is not a column of sample_submission={cfg.sample_submission} "
                        f"({', '.join(columns)}); leave it out (the sample names it) or make them agree")
    ids = [(row.get(columns[0]) or "").strip() for row in rows]
    repeated = [name for name, count in Counter(ids).items() if count > 1]
    if repeated:
        raise UserError(f"sample_submission={cfg.sample_submission} lists id '{repeated[0]}' more than once")
    return Sample(cfg.sample_submission, columns, ids)


def input_ids(cfg, paths: Sequence[str], shown: Sequence[str], column_values: Optional[List[str]]) -> List[str]:
    """The id written for each image, by `id_values`."""
    if cfg.id_values == "name":
        return [os.path.basename(p) for p in paths]
    if cfg.id_values == "stem":
        return [os.path.splitext(os.path.basename(p))[0] for p in paths]
    if cfg.id_values == "column":
        return list(column_values)
    return list(shown)


def row_order(cfg, sample: Optional[Sample], ids: List[str]) -> List[int]:
    """The predictions' indices in the order written: the input's, or the sample submission's."""
    if sample is None:
        return list(range(len(ids)))
    position: Dict[str, int] = {}
    for i, name in enumerate(ids):
        if name in position:
            raise UserError(f"two input images have the id '{name}' (id_values={cfg.id_values}), so they cannot be "
                            f"matched with sample_submission={sample.path}; choose id_values that tell them apart")
        position[name] = i
    lacking = [name for name in sample.ids if name not in position]
    extra = sorted(set(ids) - set(sample.ids))
    if lacking or extra:
        parts = []
        if lacking:
            parts.append(f"{len(lacking)} of its {len(sample.ids)} ids are not among the input's (first: "
                         f"{', '.join(repr(i) for i in lacking[:3])})")
        if extra:
            parts.append(f"{len(extra)} input image id(s) are not in it (first: {', '.join(repr(i) for i in extra[:3])})")
        raise UserError(f"sample_submission={sample.path} does not match the input: {'; '.join(parts)}. The ids "
                        "compared are those id_values gives (path, name, stem or column); a bad image left out with "
                        "skip_bad_files=true is missing too")
    return [position[name] for name in sample.ids]


def layout(cfg, sample: Optional[Sample], path_header: str, class_names: List[str], regression: bool):
    """(the header, what each column holds: "id", "label" or a class index for its probability)."""
    if sample is not None:
        by_name = {} if regression else {name: k for k, name in enumerate(class_names)}
        kinds = ["id"] + [by_name.get(column, "label") for column in sample.columns[1:]]
        if kinds.count("label") > 1:
            raise UserError(f"sample_submission={sample.path} has columns [{', '.join(sample.columns)}]; after the id "
                            f"column predict writes one label column and/or one column per class "
                            f"({', '.join(class_names[:10])}{', ...' if len(class_names) > 10 else ''})")
        return sample.columns, kinds
    id_header = cfg.id_column or (cfg.input_id_column if cfg.id_values == "column" else path_header)
    label_header = cfg.label_column or DEFAULT_LABEL_COLUMN
    if regression or not cfg.probabilities:
        return [id_header, label_header], ["id", "label"]
    columns = list(class_names)
    if set(columns) & {id_header, label_header}:  # a class called "path" would hide a column
        columns = [f"prob_{name}" for name in class_names]
    return [id_header, label_header, *columns], ["id", "label", *range(len(class_names))]


def submission_rows(cfg, ids: List[str], order: List[int], results, class_names: List[str], regression: bool, kinds):
    """The written rows, column by column as `layout` says; numbers as 6 significant digits."""
    for i in order:
        row = []
        for kind in kinds:
            if kind == "id":
                row.append(ids[i])
            elif kind != "label":
                row.append(f"{results[i, kind]:.6g}")
            elif regression:
                row.append(f"{results[i, 0]:.6g}")
            else:
                best = int(results[i].argmax())
                row.append(str(best) if cfg.labels == "index" else class_names[best])
        yield row

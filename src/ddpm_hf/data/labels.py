"""Class labels of a class-conditional run: which column holds them, the classes' names in id order, and the
class ids of rows, so that a held-out split or a Hub dataset gets the training run's ids."""

import torch

from ..errors import RunError


def find_label_column(dataset, label_column=None):
    """The class-label column of a class-conditional run: ``label_column`` if given (checked: a
    ``datasets.ClassLabel``, or integers or strings), else the one column whose feature is a ClassLabel (the embedded
    digits' "label"; datasets' imagefolder makes one from the sub-folder names, one class per sub-folder). Raises
    RunError naming the columns the dataset has."""
    from datasets import ClassLabel, Value

    features = dataset.features or {}
    labels = [name for name, feature in features.items() if isinstance(feature, ClassLabel)]
    columns = ", ".join(f"{name} ({_kind(feature)})" for name, feature in features.items()) or "(none)"
    if label_column is not None:
        if label_column not in features:
            raise RunError("{label_column} {column} is not a column; the columns: {columns}",
                           column=repr(label_column), columns=columns)
        feature = features[label_column]
        if isinstance(feature, ClassLabel) or (isinstance(feature, Value) and (
                feature.dtype.startswith(("int", "uint")) or feature.dtype in ("string", "large_string"))):
            return label_column
        raise RunError("{label_column} {column} holds {kind} values, not class labels (a ClassLabel, integers or "
                       "strings); the columns: {columns}", column=repr(label_column), kind=_kind(feature),
                       columns=columns)
    if len(labels) == 1:
        return labels[0]
    if len(labels) > 1:
        raise RunError("{class_conditional}: the columns {found} all hold class labels: pass {label_column} NAME",
                       found=", ".join(labels))
    raise RunError("{class_conditional} needs a class-label column and the dataset has none (no datasets.ClassLabel "
                   "column); its columns: {columns}. Pass {label_column} NAME for a column of integers or strings, "
                   "or give a folder of images with one sub-folder per class", columns=columns)


def _kind(feature):
    return feature.dtype if hasattr(feature, "dtype") and type(feature).__name__ == "Value" else type(feature).__name__


def class_names(dataset, label_column):
    """The class names of ``label_column``, in id order: a ClassLabel's names (kept as the dataset names them), else
    the sorted distinct values as strings (integers sorted as numbers), as ``class_encode_column`` numbers them. A
    stream's plain values cannot be listed without reading it all: RunError."""
    from datasets import ClassLabel

    feature = dataset.features[label_column]
    if isinstance(feature, ClassLabel):
        return tuple(feature.names)
    if not hasattr(dataset, "unique"):
        raise RunError("{label_column} {column} holds plain {kind} values, which a {streaming} run cannot number "
                       "without reading the whole stream first: cast the column to a datasets.ClassLabel",
                       column=repr(label_column), kind=_kind(feature))
    return tuple(str(v) for v in sorted(dataset.unique(label_column)))


def label_ids(values, feature, names, what="the data"):
    """Class ids (a (N,) long tensor, ids into ``names``) of label ``values`` of a column with ``feature``: a
    ClassLabel's integers are mapped through their names (so a held-out split whose ClassLabel lists the classes in
    another order, or fewer of them, still gets the training run's ids), plain values through ``str(value)``. Raises
    RunError for a value that is not one of ``names``."""
    from datasets import ClassLabel

    index = {name: i for i, name in enumerate(names)}
    keys = [feature.int2str(int(v)) if isinstance(feature, ClassLabel) else str(v) for v in values]
    unknown = sorted({k for k in keys if k not in index})
    if unknown:
        raise RunError("{what} has labels the training split does not ({unknown}); the training classes: {names}",
                       what=what, unknown=", ".join(unknown[:10]), names=", ".join(names))
    return torch.tensor([index[k] for k in keys], dtype=torch.long)


def row_labels(dataset, label_column, names, rows, what="the data"):
    """The class ids (a (n,) long tensor, ids into ``names``) of the dataset rows ``rows`` (e.g. the images
    ``cache_images(..., with_index=True)`` could read), from ``label_column`` (see ``label_ids``)."""
    values = dataset.select_columns([label_column])[label_column]
    return label_ids([values[i] for i in rows.tolist()], dataset.features[label_column], names, what)

"""Check a dataset's interaction files before RecBole reads them.

RecBole's own messages for a bad file are obscure (``KeyError: 'item_id'`` for a missing
column, ``not enough values to unpack`` for an empty file).  For the plugin's models these
checks run when the Config is built, before anything is trained, and name the file and column.
"""

import os
import warnings

#: RecBole's atomic-file column types.
COLUMN_TYPES = ("token", "token_seq", "float", "float_seq")


def interaction_files(config):
    """The ``.inter`` files RecBole will read for this config."""
    folder, name = config["data_path"], config["dataset"]
    parts = config["benchmark_filename"]
    if parts:
        return [os.path.join(folder, "%s.%s.inter" % (name, part)) for part in parts]
    return [os.path.join(folder, "%s.inter" % name)]


def check_interaction_file(path, config):
    """Raise a clear error when ``path`` is missing, empty, lacks the user/item columns, has a
    column without a known ``:type`` or a non-numeric value in a ``float`` column; warn about
    duplicate (user, item) rows.  Every message names the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            "dataset file not found: %s (dataset=%r, data_path=%r)"
            % (path, config["dataset"], os.path.dirname(path)))
    separator = config["field_separator"] or "\t"
    with open(path, "r", encoding="utf-8") as handle:
        header = handle.readline().rstrip("\r\n")
        first_row = handle.readline().strip()
    if not header.strip():
        raise ValueError("dataset file %s is empty: it needs a header such as "
                         "'user_id:token<TAB>item_id:token' and one interaction per line" % path)
    fields = header.split(separator)
    for field in fields:
        name, _, kind = field.partition(":")
        if kind not in COLUMN_TYPES:
            raise ValueError("dataset file %s: header column %r needs a type, one of %s (e.g. '%s:token')"
                             % (path, field, ", ".join(":" + t for t in COLUMN_TYPES), name))
    columns = [field.split(":")[0] for field in fields]
    for key in ("USER_ID_FIELD", "ITEM_ID_FIELD"):
        if config[key] not in columns:
            raise ValueError("dataset file %s has no %r column (%s); its columns are %s"
                             % (path, config[key], key, columns))
    if not first_row:
        raise ValueError("dataset file %s has a header but no interactions" % path)
    return _check_rows(path, config, fields, separator)


def _check_rows(path, config, fields, separator):
    """Numeric ``float`` columns; duplicate (user, item) rows warned about.  Returns the file's
    set of (user, item) pairs (the held-out check compares the benchmark files' sets)."""
    import pandas as pd

    wanted = (config["load_col"] or {}).get("inter") if isinstance(config["load_col"], dict) else None
    used = [f for f in fields if wanted is None or f.split(":")[0] in wanted]
    table = pd.read_csv(path, sep=separator, usecols=used, dtype=str, encoding="utf-8",
                        keep_default_na=False, engine="c" if len(separator) == 1 else "python")
    table.columns = [f.split(":")[0] for f in used]
    for field in used:
        name, _, kind = field.partition(":")
        if kind != "float":
            continue
        text = table[name].str.strip()
        bad = text.ne("") & pd.to_numeric(text, errors="coerce").isna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise ValueError("dataset file %s, line %d: column %r (float) holds %r, not a number"
                             % (path, row + 2, name, table[name].iloc[row]))
    pairs = table[[config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]]]
    duplicates = int(pairs.duplicated().sum())
    if duplicates and not config["rm_dup_inter"]:
        warnings.warn("dataset file %s has %d duplicate (user, item) rows: RecBole keeps them, so a "
                      "held-out pair can also be a training pair; set rm_dup_inter: first to drop them"
                      % (path, duplicates), stacklevel=2)
    return set(zip(pairs.iloc[:, 0], pairs.iloc[:, 1]))


def check_dataset_files(config):
    paths = interaction_files(config)
    pair_sets = [check_interaction_file(path, config) for path in paths]
    if len(paths) == 3 and config["benchmark_filename"]:
        check_held_out_pairs(paths, pair_sets)


def check_held_out_pairs(paths, pair_sets):
    """Warn when pre-split files put a (user, item) pair both in training and in valid/test
    (``paths`` and their ``pair_sets`` in train, valid, test order)."""
    train = pair_sets[0]
    for path, held in zip(paths[1:], pair_sets[1:]):
        leaked = len(held & train)
        if leaked:
            warnings.warn("dataset file %s: %d of its %d (user, item) pairs are also in %s"
                          % (path, leaked, len(held), paths[0]), stacklevel=2)

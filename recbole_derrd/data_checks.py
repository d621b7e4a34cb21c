"""Check a dataset's interaction files before RecBole reads them.

RecBole's own messages for a bad file are obscure (``KeyError: 'item_id'`` for a missing
column, ``not enough values to unpack`` for an empty file).  For the plugin's models these
checks run when the Config is built, before anything is trained, and name the file and column.
"""

import os


def interaction_files(config):
    """The ``.inter`` files RecBole will read for this config."""
    folder, name = config["data_path"], config["dataset"]
    parts = config["benchmark_filename"]
    if parts:
        return [os.path.join(folder, "%s.%s.inter" % (name, part)) for part in parts]
    return [os.path.join(folder, "%s.inter" % name)]


def check_interaction_file(path, config):
    """Raise a clear error when ``path`` is missing, empty, or lacks the user/item columns."""
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
    columns = [column.split(":")[0] for column in header.split(separator)]
    for key in ("USER_ID_FIELD", "ITEM_ID_FIELD"):
        if config[key] not in columns:
            raise ValueError("dataset file %s has no %r column (%s); its columns are %s"
                             % (path, config[key], key, columns))
    if not first_row:
        raise ValueError("dataset file %s has a header but no interactions" % path)


def check_dataset_files(config):
    for path in interaction_files(config):
        check_interaction_file(path, config)

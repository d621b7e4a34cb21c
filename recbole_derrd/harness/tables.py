"""The one markdown table writer of the harness (side-by-side, multi-seed, comparison)."""


def markdown_table(header, rows):
    """``| a | b |`` lines: the header, the separator, one line per row (cells as given)."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)

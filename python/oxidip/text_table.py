"""Aligned text tables for the command-line listings (``oxidip series``, ``oxidip queue``)."""

from collections.abc import Collection, Sequence

__all__ = ["aligned"]


def aligned(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[str]) -> str:
    """``headers`` and ``rows`` as columns separated by two spaces, the columns named in
    ``right`` aligned right (numbers), the others left; no trailing spaces."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(
            cell.rjust(width) if header in right else cell.ljust(width)
            for cell, width, header in zip(line, widths, headers, strict=True)
        ).rstrip()
        for line in lines
    )

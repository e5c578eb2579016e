"""Help-text layout shared by the subcommands."""

from __future__ import annotations

import argparse


class PreformattedEpilog(argparse.HelpFormatter):
    """Wraps one-paragraph text (descriptions) as usual; keeps text with line breaks
    (epilogs: example lists, tables) exactly as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def edit_words(evidence: dict | None) -> str | None:
    """How a verified copy was made, in plain words ("rotated 10° clockwise, mirrored"), or None
    when verification did not run or did not fit."""
    verification = (evidence or {}).get("verification")
    if not verification or not verification.get("verified"):
        return None
    return verification["explanation"]

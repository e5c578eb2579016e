"""Queries, verdicts and their thresholds, calibration, and duplicate-group reports."""

import lazy_loader

# Names load on first use, so importing the package (for one small part) stays light.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "engine": ["MAX_K", "SearchEngine", "check_k"],
        "report": ["build_report"],
        "verdicts": ["DIFFERENT", "DUPLICATE", "SIMILAR", "Thresholds", "thresholds_for"],
    },
)

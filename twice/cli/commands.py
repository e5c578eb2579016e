"""Every ``twice`` subcommand: the module of this package that registers it, and its one-line help.

Only the module of the command being run is imported (the others bring torch or FAISS), so
``twice --help`` lists the commands from this table alone.
"""

from __future__ import annotations

COMMANDS: dict[str, tuple[str, str]] = {
    "reindex": ("index", "index image files and folders (incremental, resumable)"),
    "search": ("index", "find the nearest indexed images to a query image"),
    "status": ("index", "what the data directory holds"),
    "check": ("check", "verify the data directory (catalog, index, files, hashes); --repair fixes the safe"),
    "backup": ("backup", "snapshot catalog, index and images into a new folder, while the service runs"),
    "restore": ("backup", "make a data directory from a backup, checked"),
    "demo": ("demo", "index a generated sample collection with its variants, then search it"),
    "augment": ("augment", "add transformed variants (rotate, mirror, bright, dark, ...) of every original"),
    "serve": ("serve", "run the search service (HTTP JSON API and web page) under gunicorn"),
    "token": ("token", "create, list or revoke the web service's bearer tokens (for writes)"),
    "report": ("report", "find every duplicate group in the index (HTML, JSON or CSV)"),
    "crawl": ("crawl", "download the images of web listing pages into the catalog (polite, resumable)"),
    "calibrate": ("calibrate", "fit the duplicate/similar thresholds from known variant pairs"),
    "bench": ("bench", "measure quality and speed (from a source checkout; results in bench/results/)"),
    "train": ("train", "train the embedding network on generated and local images"),
    "whiten": ("whiten", "fit the embedding's whitening on training images and write the checkpoint"),
}


def help_for(command: str) -> str:
    return COMMANDS[command][1]

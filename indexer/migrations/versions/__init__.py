"""One file per schema revision; each is a frozen snapshot, never the ORM models of today."""

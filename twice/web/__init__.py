"""The web service: the Flask app (``twice.web.app``), its service object and ``twice serve``."""

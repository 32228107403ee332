"""llem host side: study -> plan -> GPU locks -> one container per run -> results."""

__version__ = "0.1.0"

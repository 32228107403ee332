"""llem measurement agent: runs inside an engine container, measures one experiment."""

__version__ = "0.1.0"

"""The ``llem`` command and ``python -m llem``: the process's own settings, then the command line.

The command loads no pydantic plugins (what the ``pydantic`` entry-point group names, found by
reading every installed distribution's metadata before the first model is built: 0.02-0.06 s
of every command in an environment of a few hundred packages); nothing llem validates is for a
plugin to see. The user's own ``PYDANTIC_DISABLE_PLUGINS`` wins, and the library (``import llem``)
leaves the setting alone.
"""

import os

os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from .cli import run  # after the setting: pydantic reads it as llem's models are built

if __name__ == "__main__":
    run()

"""Sphinx configuration for trio-conduit's documentation.

Built offline with ``sphinx-build -W --keep-going -b html docs docs/_build/html``
(``nox -s docs``): no intersphinx, the default (alabaster) theme.
"""

from __future__ import annotations

import os
import sys

import trio_conduit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ext"))

project = "trio-conduit"
author = "the trio-conduit developers"
copyright = "2026, the trio-conduit developers"
version = release = trio_conduit.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "conduit_docs",  # _ext/conduit_docs.py: tables built from the code
]

root_doc = "index"
exclude_patterns = ["_build", "_ext", "examples"]
default_role = "py:obj"
pygments_style = "sphinx"

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autoclass_content = "class"
# Our classes implement trio's interfaces; repeating trio's long docstrings under each is noise.
autodoc_inherit_docstrings = False

html_theme = "alabaster"
html_title = f"trio-conduit {release}"
html_static_path: list[str] = []

"""trio-conduit's first-party transport plugins.

Each subpackage is an ordinary plugin module, registered through the
``trio_conduit`` entry-point group exactly as a third-party package would be;
the core imports none of them.
"""

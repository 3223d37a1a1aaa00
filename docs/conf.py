"""Sphinx configuration of the sparsekit user guide (built by ``nox -s docs``)."""

project = "sparsekit"
author = "the sparsekit developers"
copyright = "the sparsekit developers"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx", "numpydoc", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

autodoc_default_options = {"members": True, "undoc-members": False}
autodoc_mock_imports = ["torch"]  # optional and large; the others are imported in try blocks
numpydoc_show_class_members = False
numpydoc_validation_checks: set[str] = set()
intersphinx_mapping: dict = {}  # offline build: no inventories are fetched
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = "sparsekit"

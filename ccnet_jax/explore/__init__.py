"""A local web page and HTTP API to explore a model: its labels, and where a pixel looks.

``python -m ccnet_jax.explore --model=DIR`` (see ``__main__.py``). Needs the optional web
libraries of ``requirements-explore.txt``; the rest of the package does not import them.
"""

"""codx-db's benchmark against its peers (``python -m bench``; see bench/README.md).

Not part of the installed package: its dependencies come from the ``bench`` extra.
"""

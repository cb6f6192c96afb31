"""The benchmark suite (``make bench``): speed figures as ratios inside one run.

It uses only the package's public API. Sections live in one module each; ``run.py`` is the
command line.
"""

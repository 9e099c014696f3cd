"""The recurrent driver, its backends, video I/O and ``hirn-run``.

Importing this package loads no heavy library: backends import theirs when chosen.
"""

"""The local engine: HATS catalogs on disk, how they are built and read, and the warm partition
cache.
"""

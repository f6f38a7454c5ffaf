"""The unit of work: an offset range, how ranges are planned, the runner that takes one through
read → decode → match → store → publish → commit, its report and the checks it must pass.
"""

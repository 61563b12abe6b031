"""Benchmark: the reference CNI chain against cni-bridge, same scenario, same client, one run.

`python -m bench.run --help`
"""

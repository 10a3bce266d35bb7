"""`tandem bench`: hybrid, cloud-only and edge-only generation over emulated network links.

The cloud (`tandem cloud`) and the edge (bench/worker.py) run as separate processes pinned to
disjoint CPUs, like two machines; every byte between them crosses bench/relay.py, which
delays it and counts it. This package itself imports neither torch nor llama.cpp.
"""

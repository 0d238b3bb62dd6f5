"""Experiments: Table 1 rows, the CPU demo, the full reproduction, throughput and frozen-feature probes."""

"""Throughput benchmarks: each prints a table and writes JSON + Markdown to benchmarks/results/."""

"""Helpers the benchmarks share (no benchmark here): the hand-written TorchRec baseline, the paired-seed bound."""

"""Sampling: KV-cached decoding of text, images and interleaved documents (docs/sampling.md)."""

"""The model's parts (mingpt/model.py puts them together): layers.py (norms, positions,
activations, the attention kinds a config names), cache.py (what attention remembers while
decoding: a growing KV cache with rings for local layers, or a static one of fixed shape),
generate.py (choosing the next token), decode.py (static-shape decoding that compiles once), and
kernels/ (CPU fast paths and banded attention, applied explicitly)."""

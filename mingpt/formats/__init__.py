"""Models in and out of mingpt: pretrained.py (a run folder, a Hugging Face folder or a hub name ->
a model, and back) and hf/ (Hugging Face's GPT-2, GPT-1 and GPT-Neo, exactly)."""

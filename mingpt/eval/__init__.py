"""Judging a model: loss.py (the validation loss the Trainer logs), choice.py (log-likelihoods and
multiple choice, scored as lm-evaluation-harness scores them), hellaswag.py (its items, read and
asked as the harness asks them), lm_eval.py (a mingpt model as the harness's LM, for any of its
tasks; optional: `pip install "mingpt[eval]"`)."""

"""The lm-evaluation-harness bridge under the name outside code registers it by: mingpt/eval/lm_eval.py."""
from mingpt.eval.lm_eval import MinGPTLM  # noqa: F401  (importing it registers the model "mingpt")

"""The training machinery the Trainer's loop (mingpt/trainer.py) is made of, one room each:
config (its settings), stopping (when a run ends), optim, schedule and muon (the optimizer and
its rates), batches (every rank's rows of a batch), metrics (a row of metrics.jsonl), checkpoint
(the format, and the checks before resuming), run_folder (every file of a run), runtime (device,
dtype, seeds, the process group), tracking (TensorBoard, W&B). None of it knows about GPT."""

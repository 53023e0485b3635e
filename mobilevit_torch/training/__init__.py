"""Training: ``loop.py`` is the loop; each file beside it one piece it calls (data, step, optimizer, EMA,
resume, checkpoints, validation, logs, summary)."""

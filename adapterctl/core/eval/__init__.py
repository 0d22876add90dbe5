"""``eval``: how far each copy of an adapter (a merge, a conversion, a dtype, another engine's run)
is from the adapter as trained, measured on the model's output (KL, top-1 agreement, perplexity)."""

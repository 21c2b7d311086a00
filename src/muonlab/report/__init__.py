"""Reports from metrics files: read the JSONL the training loop writes, aggregate over seeds,
write markdown tables and matplotlib figures. Nothing here trains; every number it prints
comes from a metrics file."""

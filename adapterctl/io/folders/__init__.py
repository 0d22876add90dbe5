"""What is in a folder, without torch: adapter and model folders, the JSON files they carry, model cards, and atomic output folders."""

"""Data: dataset files and formats, cleaning, the split and the leak check."""

"""Base models (tiny, GGUF, hub, local), prompts, LoRA parameter counts, generation."""

"""LoRA fine-tuning (trl SFTTrainer or the lean loop) and the torchrun launcher."""

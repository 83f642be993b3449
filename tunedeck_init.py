"""tunedeck: a terminal workbench for LoRA fine-tuning of chat models on MLX."""

__version__ = "0.1.0"

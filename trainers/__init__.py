"""Training: the stage recipes over one TRL path, LoRA merging, instruction-data generation and the offline demo."""

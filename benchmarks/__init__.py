"""Speed benchmark of this project against transformers' built-in Llava trained by stock TRL (not shipped)."""

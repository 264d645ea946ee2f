"""Training recipes, the `llava` command line and the offline demo."""

"""Models: loading (Hub, local, GGUF, builtin), LoRA/DoRA adapters and switching them off, the response-window head."""

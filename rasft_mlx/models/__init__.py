"""Models: loading (Hub, local, GGUF, builtin), LoRA/DoRA adapters or full fine-tuning and the reference policy, the response-window head."""

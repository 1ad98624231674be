"""Export: adapter formats (mlx, PEFT, fused), the model card, the Hub upload."""

"""Run the rasft-mlx command line from a checkout: `python cli.py train recipes/quickstart.yaml`."""

from rasft_mlx.cli import main

if __name__ == "__main__":
    main()

"""`python -m gpt2cli ...` (what torchrun launches) is the `gpt2` command."""

from gpt2cli.cli.app import main

if __name__ == "__main__":
    main()

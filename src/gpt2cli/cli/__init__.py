"""The command line: thin Typer commands that parse, resolve defaults and call the library."""

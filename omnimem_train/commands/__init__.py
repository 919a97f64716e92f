"""The `omnimem-train` subcommands: argument parsing and printing around the library."""

"""One module per `multistep` command: `add_parser(subparsers)` returns its parser, `run(args)` its exit code.
Adding a command = one file here + its line in cli.COMMANDS."""

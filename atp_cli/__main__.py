from atp_cli.cli import main

main()

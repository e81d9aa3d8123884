from drkit.cli import main

main()

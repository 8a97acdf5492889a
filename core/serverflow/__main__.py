from serverflow.cli import main

main()

from moesim.cli.main import main

main()

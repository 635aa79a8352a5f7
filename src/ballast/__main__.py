from ballast.cli.main import main

main()

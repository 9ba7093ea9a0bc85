from cxrtriage.cli.app import main

main()

from cxrtriage.cli.app import main

if __name__ == "__main__":  # decode worker processes re-import the main module: it must not run the CLI again
    main()

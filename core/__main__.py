from rcdm.cli import main

main()

from rcdm.app.cli import main

main()

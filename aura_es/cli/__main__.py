from aura_es.cli.main import main

main()

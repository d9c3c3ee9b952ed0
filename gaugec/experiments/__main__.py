from gaugec.experiments.cli import main

main()

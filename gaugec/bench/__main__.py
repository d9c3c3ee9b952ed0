from gaugec.bench.cli import main

main()

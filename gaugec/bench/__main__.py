from gaugec.bench import main

main()

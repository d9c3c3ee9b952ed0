from gaugec.experiments import main

main()

from vnfchain.cli import main

main()

from protonet.cli import main

main()

from lite_delta.cli import main

main()

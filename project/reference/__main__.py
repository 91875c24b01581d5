from project.reference.cli import main

main()

from facetrust.cli import main

main()
